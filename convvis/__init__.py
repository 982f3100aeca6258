"""convvis: the tested helpers behind the book on Simonyan, Vedaldi & Zisserman (2013),
*Deep Inside Convolutional Networks: Visualising Image Classification Models and Saliency Maps*
(arXiv:1312.6034).

Importing this package changes no global state (no seeding, no device choice, no hooks): call
:func:`convvis.setup` for those.
"""

from .gradients import (
    class_score,
    first_region_boundary,
    input_gradient,
    rectifier_states,
    taylor_curve,
)
from .images import (
    box_to_input,
    data_dir,
    deprocess,
    load_annotations,
    load_image,
    load_images,
    sample_names,
    sample_path,
    to_photo,
)
from .models import (
    LoadedModel,
    Preprocessing,
    WeightsUnavailableError,
    efficientnet_lite0_key_map,
    imagenet_class_names,
    load_model,
    predict,
)
from .plotting import draw_box, overlay, prediction_title, show_images, signed_to_rgb, stretch
from .runtime import resolve_device, setup

__version__ = "0.1.0"

__all__ = [
    "class_score",
    "first_region_boundary",
    "input_gradient",
    "rectifier_states",
    "taylor_curve",
    "box_to_input",
    "LoadedModel",
    "Preprocessing",
    "WeightsUnavailableError",
    "data_dir",
    "deprocess",
    "draw_box",
    "efficientnet_lite0_key_map",
    "imagenet_class_names",
    "load_annotations",
    "load_image",
    "load_images",
    "load_model",
    "overlay",
    "predict",
    "prediction_title",
    "resolve_device",
    "sample_names",
    "sample_path",
    "setup",
    "show_images",
    "signed_to_rgb",
    "stretch",
    "to_photo",
]
