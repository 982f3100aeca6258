"""convvis: the tested helpers behind the book on Simonyan, Vedaldi & Zisserman (2013),
*Deep Inside Convolutional Networks: Visualising Image Classification Models and Saliency Maps*
(arXiv:1312.6034).

Every chapter's entry point is here, at the top level:

* models and photos: :func:`load_model`, :func:`load_image`, :func:`predict`, ...
* Sect. 3, the gradient as a Taylor model: :func:`input_gradient`, :func:`taylor_curve`, ...
* Sect. 2, class models: :func:`visualise`, :func:`paper_preset`, objectives, parametrisations,
  transforms;
* Sect. 3.1, saliency maps: :func:`saliency_map` and the later methods, and the faithfulness
  metrics (:func:`deletion_auc`, :func:`pointing_game`, ...);
* Sect. 3.2, localisation: :func:`segment`, :func:`localise_images`, their stages and baselines,
  and the ILSVRC format (``python -m convvis.localise`` runs the paper's ImageNet protocol);
* Sect. 4, DeconvNets: :func:`backprop_rule`, :func:`rule_gradient`, :func:`reconstruct`.

``target`` means one thing everywhere: an int, a class name such as ``"tabby"``, a sequence or
tensor of them (one per image), or ``None`` for each image's top-1 class.

Importing this package changes no global state (no seeding, no device choice, no hooks): call
:func:`convvis.setup` for those.
"""

from .baselines import centre_box, grabcut_mask, threshold_box
from .batched_segmentation import PreparedCuts, cut_prepared, prepare_cuts, segment_batch
from .class_model import (
    L2,
    LEGIBILITY_JUDGES,
    PAPER_LAMBDA,
    BlurEvery,
    ClassProbability,
    ClassScore,
    Context,
    FourierImage,
    History,
    Jitter,
    Legibility,
    Objective,
    PixelImage,
    RandomAffine,
    RandomRotate,
    RandomScale,
    Result,
    Snapshots,
    TotalVariation,
    class_model_preset,
    class_model_presets,
    colour_sqrt_cov,
    fourier_image,
    legibility,
    legible_preset,
    paper_checkpoints,
    paper_preset,
    visualise,
)
from .colour_model import ColourModel, fit_colour_model, fit_colour_models, unaries
from .common import Target, capture_output, frozen_parameters, resolve_targets
from .deconvnet import (
    RULES,
    FunctionalRectifierError,
    backprop_rule,
    reconstruct,
    relu_backward,
    rule_gradient,
)
from .gradients import (
    TaylorCurve,
    class_score,
    first_region_boundary,
    input_gradient,
    rectifier_states,
    taylor_curve,
)
from .ilsvrc import (
    ILSVRCLocalisation,
    imagenet_wnids,
    localisation_correct,
    read_ilsvrc_boxes,
    write_annotation,
    write_sample_fixture,
)
from .images import (
    box_to_input,
    box_to_photo,
    data_dir,
    deprocess,
    load_annotations,
    load_image,
    load_images,
    photo_to_input,
    sample_names,
    sample_path,
    to_photo,
)
from .loaded_model import LoadedModel, Preprocessing, preprocessing_of
from .metrics import (
    PROTOCOLS,
    Protocol,
    auc,
    deletion_auc,
    gaussian_blur,
    insertion_auc,
    parameter_layers,
    perturbation_curve,
    pointing_game,
    randomisation_cascade,
    randomised_copy,
    randomized_copy,
    rank_correlation,
    with_steps,
)
from .models import (
    EMBEDDED_MODELS,
    WeightsUnavailableError,
    efficientnet_lite0_key_map,
    efficientnet_lite_key_map,
    imagenet_class_names,
    load_model,
    predict,
)
from .plotting import (
    draw_box,
    overlay,
    prediction_title,
    show_checkpoints,
    show_images,
    signed_to_rgb,
    stretch,
)
from .runtime import keep_freed_memory, reference_parameters, reference_run, resolve_device, setup
from .saliency import (
    REDUCTIONS,
    grad_cam,
    gradient_x_input,
    integrated_gradients,
    last_conv_layer,
    reduce_channels,
    saliency_map,
    smoothgrad,
)
from .segmentation import (
    Segmentation,
    bounding_box,
    box_iou,
    graph_cut,
    graph_cut_energy,
    largest_component,
    localise_images,
    neighbour_pairs,
    pairwise_weights,
    seed_counts,
    seeds_from_saliency,
    segment,
)

__version__ = "0.1.0"

# Grouped as the chapters use them; docs/reference.md lists every name (a test checks it).
__all__ = [
    # models and photos (chapter 0)
    "EMBEDDED_MODELS", "LoadedModel", "Preprocessing", "preprocessing_of", "WeightsUnavailableError",
    "load_model", "predict",
    "imagenet_class_names", "efficientnet_lite_key_map", "efficientnet_lite0_key_map",
    "load_image", "load_images", "to_photo", "deprocess", "box_to_input", "data_dir", "sample_names",
    "sample_path", "load_annotations", "setup", "resolve_device", "reference_parameters", "reference_run",
    "keep_freed_memory",
    # plotting
    "show_images", "overlay", "draw_box", "prediction_title", "signed_to_rgb", "stretch",
    "show_checkpoints",
    # shared plumbing
    "Target", "resolve_targets", "frozen_parameters", "capture_output",
    # the gradient as a Taylor model (chapter 1)
    "input_gradient", "class_score", "taylor_curve", "TaylorCurve", "rectifier_states",
    "first_region_boundary",
    # class models (chapter 2)
    "visualise", "paper_preset", "PAPER_LAMBDA", "Objective", "Context", "ClassScore",
    "ClassProbability", "L2", "TotalVariation", "PixelImage", "FourierImage", "Jitter", "RandomScale",
    "RandomRotate", "BlurEvery", "History", "Result", "colour_sqrt_cov", "legible_preset",
    "class_model_preset", "class_model_presets", "fourier_image", "RandomAffine", "legibility", "Legibility",
    "LEGIBILITY_JUDGES", "Snapshots", "paper_checkpoints",
    # saliency maps and their faithfulness (chapter 3)
    "saliency_map", "reduce_channels", "REDUCTIONS", "smoothgrad", "integrated_gradients",
    "gradient_x_input", "grad_cam", "last_conv_layer", "randomised_copy", "randomisation_cascade",
    "parameter_layers",
    "perturbation_curve", "deletion_auc", "insertion_auc", "auc", "Protocol", "PROTOCOLS", "with_steps",
    "gaussian_blur", "pointing_game", "rank_correlation",
    # localisation (chapter 4)
    "segment", "localise_images", "Segmentation", "seeds_from_saliency", "ColourModel",
    "fit_colour_model", "unaries", "pairwise_weights", "neighbour_pairs", "graph_cut",
    "graph_cut_energy", "largest_component", "bounding_box", "box_iou", "threshold_box", "centre_box",
    "grabcut_mask", "seed_counts", "fit_colour_models", "segment_batch", "prepare_cuts", "PreparedCuts",
    "cut_prepared",
    # the ILSVRC format and the localisation command's fixtures (chapter 4; python -m convvis.localise)
    "localisation_correct", "read_ilsvrc_boxes", "ILSVRCLocalisation", "imagenet_wnids", "photo_to_input",
    "box_to_photo", "write_annotation", "write_sample_fixture",
    # DeconvNets and guided backprop (chapter 5)
    "backprop_rule", "rule_gradient", "reconstruct", "relu_backward", "RULES", "FunctionalRectifierError",
    # deprecated spellings, kept for one release (each warns)
    "randomized_copy",
]
