"""The model: a card and its safetensors weights -> the network, its input policy, calibration and
threshold; the shipped models by name; device, precision and worker choices shared with training.
"""

from __future__ import annotations

from audit.model._card import (
    AI_CLASS_INDEX,
    CLASS_NAMES,
    DEFAULT_MODEL_PATH,
    SHIPPED_MODELS_DIR,
    LoadedModel,
    ModelCard,
    ModelError,
    build_network,
    file_sha256,
    gradcam_grid_of,
    model_paths,
    read_card,
    refuse_pickle,
    resolve_model,
    save_model,
    shipped_models,
)
from audit.model._compute import (
    DEFAULT_BATCH_SIZE,
    DEVICE_CHOICES,
    PRECISION_CHOICES,
    ComputeError,
    ComputePlan,
    autocast,
    autocast_dtype,
    cpu_has_native_bf16,
    default_workers,
    pick_device,
    plan_compute,
    resolve_precision,
)
from audit.model._input_policy import (
    Preprocessing,
    combine_views,
    crop_boxes,
    crops_scale,
    flatten_views,
    normalize,
    shorter_side_to,
    to_model_input,
)
from audit.model._routing import Route, card_routes, input_description, load_model, route_index, route_policies
from audit.model._summary import ModelSummary, data_set_rows, format_summary, summarize, training_rows
from audit.model._uncertainty import (
    DEGRADED_DESCRIPTION,
    NoveltyStatistics,
    Uncertainty,
    degraded_copy,
    features_and_logits,
    uncertain_reason,
)

__all__ = ["AI_CLASS_INDEX", "CLASS_NAMES", "ComputeError", "ComputePlan", "DEFAULT_BATCH_SIZE", "DEFAULT_MODEL_PATH", "DEGRADED_DESCRIPTION", "DEVICE_CHOICES", "LoadedModel", "ModelCard", "ModelError", "ModelSummary", "NoveltyStatistics", "PRECISION_CHOICES", "Preprocessing", "Route", "SHIPPED_MODELS_DIR", "Uncertainty", "autocast", "autocast_dtype", "build_network", "card_routes", "combine_views", "cpu_has_native_bf16", "crop_boxes", "crops_scale", "data_set_rows", "default_workers", "degraded_copy", "features_and_logits", "file_sha256", "flatten_views", "format_summary", "gradcam_grid_of", "input_description", "load_model", "model_paths", "normalize", "pick_device", "plan_compute", "read_card", "refuse_pickle", "resolve_model", "resolve_precision", "route_index", "route_policies", "save_model", "shipped_models", "shorter_side_to", "summarize", "to_model_input", "training_rows", "uncertain_reason"]
