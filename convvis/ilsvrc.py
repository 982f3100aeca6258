"""The ILSVRC localisation format and rule, in the original photo's coordinates.

The ILSVRC-2012 validation set comes as ``ILSVRC2012_img_val/ILSVRC2012_val_00000001.JPEG``, ...
and ``ILSVRC2012_bbox_val/val/ILSVRC2012_val_00000001.xml``, ...: one PASCAL-VOC style XML file per
photo, whose objects are named by WordNet synset ids (``n01440764``) with boxes in the photo's
pixels. The localisation rule (the one behind the paper's 46.4 %): a guess is a class and a box; an
image is localised when some guess has the class of a ground-truth object and a box with
intersection over union >= 0.5 with that object's box, computed in the original photo's pixels.

How a photo becomes the network's input here: the **whole photo resized to an S x S square**
(S = the model's ``input_size``; no centre crop, the aspect ratio is not kept). The network sees
all of the photo, a box found in the S x S input maps back to the photo by scaling x by W/S and y
by H/S (:func:`convvis.box_to_photo`), and photos of any shape batch together. The price is an anisotropic
stretch (ILSVRC's photos are mostly 4:3, a 1.33 stretch at most for those), which costs the
classifier a little accuracy compared with the usual resize-and-centre-crop: the
classification-only error that :mod:`convvis.localise` reports shows how much.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from .images import load_annotations, photo_to_input, sample_names, sample_path, to_photo
from .loaded_model import LoadedModel, Preprocessing, preprocessing_of
from .segmentation import box_iou

__all__ = [
    "imagenet_wnids",
    "read_ilsvrc_boxes",
    "localisation_correct",
    "ILSVRCLocalisation",
    "IMAGE_SUFFIXES",
    "write_annotation",
    "write_sample_fixture",
]

IMAGE_SUFFIXES = (".JPEG", ".jpeg", ".jpg", ".JPG", ".png", ".PNG")


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC-2012 WordNet ids in class-index order (offline, from timm's tables).

    This is the order of torchvision's and timm's ImageNet-1k classifiers (the sorted synset ids).
    """
    from timm.data import ImageNetInfo

    wnids = list(ImageNetInfo().label_names())
    assert len(wnids) == 1000
    return wnids


def read_ilsvrc_boxes(xml_path: str | os.PathLike) -> dict:
    """Parse one ILSVRC (PASCAL-VOC style) annotation file.

    Returns ``{"filename", "width", "height", "objects": [(wnid, [x0, y0, x1, y1])]}`` with boxes
    converted from the file's inclusive 1-based pixel corners to [x0, y0, x1, y1) in 0-based
    pixels of the original photo. A missing file raises ``FileNotFoundError``; a file that is not
    XML, or lacks the size or a box's corners, raises ``ValueError`` saying what is wrong. An
    annotation with no object is returned with an empty list (the caller decides).
    """
    path = Path(xml_path)
    if not path.is_file():
        raise FileNotFoundError(f"no annotation file {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path.name} is not well-formed XML ({e})") from None
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        raise ValueError(f"{path.name} is not an ILSVRC annotation (no <size> with width and height)")
    try:
        width, height = int(size.find("width").text), int(size.find("height").text)
        objects = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            objects.append((obj.find("name").text.strip(), [x0 - 1, y0 - 1, x1, y1]))
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"{path.name}: an object lacks its name or a box corner, or a number "
                         "does not parse") from None
    filename = root.find("filename")
    return {"filename": filename.text.strip() if filename is not None and filename.text else path.stem,
            "width": width, "height": height, "objects": objects}


def localisation_correct(
    predictions: Sequence[tuple[int, Sequence[float] | None]],
    objects: Sequence[tuple[Sequence[int], Sequence[float]]],
    iou_threshold: float = 0.5,
) -> bool:
    """The ILSVRC localisation criterion for one image.

    ``predictions``: up to k ``(class, box)`` guesses (top-1: one; top-5: five); ``objects``: the
    ground truth as ``(accepted classes, box)``. Correct when some guess has a class accepted for
    some object and a box with IoU >= ``iou_threshold`` with that object's box. Boxes in one
    coordinate frame (for ILSVRC: the original photo's pixels).
    """
    for cls, box in predictions:
        if box is None:
            continue
        for classes, gt in objects:
            if cls in classes and box_iou(box, gt) >= iou_threshold:
                return True
    return False


class ILSVRCLocalisation(torch.utils.data.Dataset):
    """ILSVRC validation photos with their boxes, prepared for a model; bad inputs become records.

    ``images_dir`` holds ``<name>.JPEG`` files, ``annotations_dir`` the matching ``<name>.xml``
    (the layout of ``ILSVRC2012_img_val`` and ``ILSVRC2012_bbox_val/val``). The items are the
    sorted union of the names in both folders (``limit``: the first ``limit`` of them), so a
    photo without its XML, and an XML without its photo, are both seen.

    Each item is a dict: ``name``; ``image``, the (3,S,S) normalised input of the whole photo
    (:func:`convvis.photo_to_input`); ``size``, the photo's (H, W); ``objects``, the ground truth as
    ``[(accepted classes, box in photo pixels)]`` ready for :func:`localisation_correct`;
    ``wnids``, the objects' synset ids; and ``error``, None, or ``(kind, detail)`` when the item
    cannot be scored: ``"missing image"``, ``"missing annotation"``, ``"unreadable image"``,
    ``"malformed annotation"``, ``"unknown synset"``, ``"no boxes"``, ``"size mismatch"`` (the
    photo's size differs from the XML's, so the boxes' frame is unknown). Errors never raise,
    so a ``DataLoader`` over millions of files runs on; use ``collate_fn=list``.

    A folder that does not exist, or an annotation folder with no ``.xml`` file, raises
    ``FileNotFoundError`` at once.
    """

    ERRORS = ("missing image", "missing annotation", "unreadable image", "malformed annotation",
              "unknown synset", "no boxes", "size mismatch")

    def __init__(self, images_dir, annotations_dir, spec: LoadedModel | Preprocessing,
                 limit: int | None = None, wnids: Sequence[str] | None = None):
        self.images_dir, self.annotations_dir = Path(images_dir), Path(annotations_dir)
        for what, d in (("image", self.images_dir), ("annotation", self.annotations_dir)):
            if not d.is_dir():
                raise FileNotFoundError(f"no {what} folder {d}")
        self.spec = preprocessing_of(spec)
        self._images = {p.stem: p.name for p in self.images_dir.iterdir() if p.suffix in IMAGE_SUFFIXES}
        xml = {p.stem for p in self.annotations_dir.glob("*.xml")}
        if not xml:
            raise FileNotFoundError(
                f"no .xml annotation files in {self.annotations_dir} (for ILSVRC-2012 validation: "
                "the folder ILSVRC2012_bbox_val/val)")
        self._xml = xml
        self.names = sorted(xml | set(self._images))[:limit]
        self.index = {w: i for i, w in enumerate(wnids if wnids is not None else imagenet_wnids())}

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, i: int) -> Path | None:
        name = self._images.get(self.names[i])
        return self.images_dir / name if name is not None else None

    def xml_path(self, i: int) -> Path:
        return self.annotations_dir / f"{self.names[i]}.xml"

    def objects(self, i: int) -> tuple[list[tuple[list[int], list[float]]], list[str], tuple[int, int]]:
        """Ground truth of item ``i``: ``([(classes, box)], wnids, (H, W) from the XML)``.

        Raises ``FileNotFoundError`` / ``ValueError`` / ``KeyError`` for the errors above.
        """
        if self.names[i] not in self._xml:
            raise FileNotFoundError(f"no annotation file {self.xml_path(i).name}")
        rec = read_ilsvrc_boxes(self.xml_path(i))
        if not rec["objects"]:
            raise LookupError(f"{self.xml_path(i).name} has no <object> with a box")
        out, wnids = [], []
        for wnid, box in rec["objects"]:
            if wnid not in self.index:
                raise KeyError(f"{wnid} in {self.xml_path(i).name} is not one of the model's classes")
            out.append(([self.index[wnid]], box))
            wnids.append(wnid)
        return out, wnids, (rec["height"], rec["width"])

    def __getitem__(self, i: int) -> dict:
        item = {"index": i, "name": self.names[i], "image": None, "size": None, "objects": None,
                "wnids": None, "error": None}
        try:
            objects, wnids, xml_size = self.objects(i)
        except FileNotFoundError as e:
            item["error"] = ("missing annotation", str(e))
            return item
        except KeyError as e:
            item["error"] = ("unknown synset", e.args[0])
            return item
        except LookupError as e:
            item["error"] = ("no boxes", str(e))
            return item
        except ValueError as e:
            item["error"] = ("malformed annotation", str(e))
            return item
        path = self.image_path(i)
        if path is None:
            item["error"] = ("missing image", f"no image file for {self.names[i]} in {self.images_dir}")
            return item
        try:
            photo = to_photo(path)
        except Exception as e:  # Pillow raises OSError, ValueError, SyntaxError... for bad files
            item["error"] = ("unreadable image", f"{path.name}: {type(e).__name__}: {e}")
            return item
        size = photo.shape[:2]
        if size != xml_size:
            item["error"] = ("size mismatch", f"{path.name} is {size[1]} x {size[0]} pixels, its XML "
                             f"says {xml_size[1]} x {xml_size[0]}")
            return item
        item.update(image=photo_to_input(photo, self.spec), size=size, objects=objects, wnids=wnids)
        return item


def write_annotation(path: str | os.PathLike, name: str, size: tuple[int, int],
                     objects: Sequence[tuple[str, Sequence[float]]]) -> None:
    """Write one ILSVRC-style XML: ``size`` (H, W), ``objects`` as ``(wnid, [x0, y0, x1, y1))``
    in 0-based exclusive pixels (stored, as ILSVRC does, as inclusive 1-based corners)."""
    h, w = size
    objs = "".join(
        f"<object><name>{wnid}</name><bndbox><xmin>{round(x0) + 1}</xmin><ymin>{round(y0) + 1}</ymin>"
        f"<xmax>{round(x1)}</xmax><ymax>{round(y1)}</ymax></bndbox></object>"
        for wnid, (x0, y0, x1, y1) in objects)
    Path(path).write_text(
        f"<annotation><folder>val</folder><filename>{name}</filename><size><width>{w}</width>"
        f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>\n", encoding="utf-8")


def write_sample_fixture(root: str | os.PathLike, count: int | None = None,
                         names: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Write the book's sample photos and boxes in the ILSVRC validation layout under ``root``.

    Each photo appears as is, flipped left-right, upside down, and both (4 variants), repeated
    with new names until ``count`` photos (default: one of each variant), as
    ``root/images/ILSVRC2012_val_%08d.JPEG`` (quality 90) and ``root/annotations/....xml``. An
    object with several accepted classes (cat breeds) gets one XML object per class, same box,
    so any of them counts. ``names``: only these sample photos. Returns the two folders.
    """
    root = Path(root)
    img_dir, xml_dir = root / "images", root / "annotations"
    img_dir.mkdir(parents=True, exist_ok=True)
    xml_dir.mkdir(parents=True, exist_ok=True)
    wnids = imagenet_wnids()
    notes = load_annotations()
    variants = []
    for photo_name in names or sample_names():
        im = Image.open(sample_path(photo_name)).convert("RGB")
        w, h = im.size
        objs = [(wnids[c], o["box"]) for o in notes[photo_name]["objects"] for c in o["classes"]]
        for flip_x in (False, True):
            for flip_y in (False, True):
                v = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip_x else im
                v = v.transpose(Image.Transpose.FLIP_TOP_BOTTOM) if flip_y else v
                boxes = []
                for wnid, (x0, y0, x1, y1) in objs:
                    if flip_x:
                        x0, x1 = w - x1, w - x0
                    if flip_y:
                        y0, y1 = h - y1, h - y0
                    boxes.append((wnid, (x0, y0, x1, y1)))
                variants.append((v, boxes))
    count = len(variants) if count is None else count
    for k in range(count):
        v, boxes = variants[k % len(variants)]
        name = f"ILSVRC2012_val_{k + 1:08d}"
        v.save(img_dir / f"{name}.JPEG", quality=90)
        write_annotation(xml_dir / f"{name}.xml", name, (v.size[1], v.size[0]), boxes)
    return img_dir, xml_dir
