"""Helpers the test files share: `audit` commands run in the test process and their outputs read
back (cli), and the report page opened in headless Chromium (browser)."""
