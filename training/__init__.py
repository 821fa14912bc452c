"""Train, evaluate and export the detector that `audit` loads."""
