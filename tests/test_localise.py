"""The ILSVRC localisation command (convvis.localise) and the ILSVRC format (convvis.ilsvrc).

Fixtures are written here in the ILSVRC-2012 validation layout (one JPEG and one XML per photo).
Runs use the embedded model on the CPU, mostly in-process (workers=0) to keep the file fast; one
run uses the process pool and must agree with the in-process one.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import convvis
from convvis.ilsvrc import ILSVRCLocalisation, imagenet_wnids, read_ilsvrc_boxes, write_annotation
from convvis.images import box_to_photo, photo_to_input
from convvis.localise import PUBLISHED, _read_done, evaluate, format_summary, main
from convvis.segmentation import box_iou

# one red ellipse on a flat grey-blue background, in photos wider than tall (so a mix-up of the
# x and y scales back to photo pixels would show); the boxes are the ellipses' bounding boxes
SCENES = [((200, 320), (40, 30, 160, 150)), ((200, 320), (160, 30, 280, 150))]


def scene(size, box, seed=0):
    h, w = size
    rng = np.random.default_rng(seed)
    photo = np.empty((h, w, 3))
    photo[:] = (0.55, 0.6, 0.65)
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[:h, :w] + 0.5
    u, v = (xx - (x0 + x1) / 2) / ((x1 - x0) / 2), (yy - (y0 + y1) / 2) / ((y1 - y0) / 2)
    inside = u**2 + v**2 <= 1
    photo[inside] = (0.85, 0.25, 0.1)
    photo += rng.normal(0, 0.02, photo.shape)
    return (np.clip(photo, 0, 1) * 255).round().astype(np.uint8)


def top1(net, path):
    """The model's top-1 class for a photo file, as the command will see it (after JPEG)."""
    x = photo_to_input(convvis.to_photo(path), net)[None]
    with torch.no_grad():
        return int(net.model(x).argmax())


def write_scenes(root, net):
    """The scenes as JPEG + XML, each labelled with the model's own top-1 class for it, so that
    localisation is what is tested."""
    img, xml = root / "img", root / "xml"
    img.mkdir(parents=True)
    xml.mkdir(parents=True)
    wnids = imagenet_wnids()
    for k, (size, box) in enumerate(SCENES):
        name = f"ILSVRC2012_val_{k + 1:08d}"
        photo = scene(size, box, seed=k)
        Image.fromarray(photo).save(img / f"{name}.JPEG", quality=95)
        write_annotation(xml / f"{name}.xml", name, size, [(wnids[top1(net, img / f"{name}.JPEG")], box)])
    return img, xml


def lines(path):
    return [json.loads(s) for s in path.read_text().splitlines()]


def test_reader_converts_ilsvrc_corners(tmp_path):
    write_annotation(tmp_path / "a.xml", "a", (200, 300), [("n01440764", (10, 20, 110, 120))])
    rec = read_ilsvrc_boxes(tmp_path / "a.xml")
    assert "<xmin>11</xmin>" in (tmp_path / "a.xml").read_text()  # 1-based inclusive on disk
    assert rec["width"] == 300 and rec["height"] == 200
    assert rec["objects"] == [("n01440764", [10.0, 20.0, 110.0, 120.0])]
    assert imagenet_wnids()[0] == "n01440764" and len(imagenet_wnids()) == 1000


def test_boxes_map_back_to_photo_pixels():
    # the S x S input of a 200 x 320 photo: x scales by 320 / 224, y by 200 / 224
    assert box_to_photo((0, 0, 224, 224), (200, 320), 224) == [0, 0, 320, 200]
    assert box_to_photo((28, 56, 112, 112), (200, 320), 224) == [40, 50, 160, 100]
    x = photo_to_input(np.zeros((200, 320, 3), np.float32), convvis.Preprocessing())
    assert x.shape == (3, 224, 224)


def test_dataset_items_are_in_photo_coordinates(tmp_path, net):
    img, xml = write_scenes(tmp_path, net)
    ds = ILSVRCLocalisation(img, xml, net)
    assert len(ds) == 2 and ds.names[0] == "ILSVRC2012_val_00000001"
    it = ds[1]
    assert it["error"] is None and it["image"].shape == (3, 224, 224) and it["size"] == (200, 320)
    ((classes, box),) = it["objects"]
    assert box == [160.0, 30.0, 280.0, 150.0] and len(classes) == 1
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=list)))
    assert [b["name"] for b in batch] == ds.names


def test_the_command_localises_one_object_on_a_flat_background(tmp_path, net):
    img, xml = write_scenes(tmp_path, net)
    out = tmp_path / "r.jsonl"
    summary = evaluate(img, xml, out, model=net, workers=0, loader_workers=0, batch_size=2,
                       progress=False)
    recs = lines(out)
    for rec, (size, box) in zip(recs, SCENES):
        assert rec["size"] == list(size)
        pred = rec["predictions"][0]["box"]
        print(rec["image"], pred, box_iou(pred, box))
        assert box_iou(pred, box) > 0.7  # in the photo's pixels
        assert rec["correct"]["top1_loc"] and rec["correct"]["top1_cls"]
        assert len(rec["predictions"]) == 5
    assert summary["scored"] == 2 and summary["top1_loc_error"] == 0.0 and summary["topk_loc_error"] == 0.0
    assert summary["errors"] == {}


def test_bad_inputs_become_recorded_errors_and_the_run_goes_on(tmp_path, net):
    img, xml = write_scenes(tmp_path, net)  # two good photos, then the bad ones
    good = scene(*SCENES[0])
    wn = imagenet_wnids()[0]

    def photo(name):
        Image.fromarray(good).save(img / f"{name}.JPEG")

    def annot(name, objects=((wn, SCENES[0][1]),), size=SCENES[0][0]):
        write_annotation(xml / f"{name}.xml", name, size, list(objects))

    annot("b_missing_image")
    photo("c_no_annotation")
    (img / "d_unreadable.JPEG").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    annot("d_unreadable")
    photo("e_malformed")
    (xml / "e_malformed.xml").write_text("<annotation><size><width>3</width></annotation")
    photo("f_unknown_synset")
    annot("f_unknown_synset", [("n99999999", SCENES[0][1])])
    photo("g_no_boxes")
    annot("g_no_boxes", [])
    photo("h_size_mismatch")
    annot("h_size_mismatch", size=(100, 100))
    out = tmp_path / "r.jsonl"
    summary = evaluate(img, xml, out, model=net, workers=0, loader_workers=0, batch_size=4,
                       progress=False)
    errors = {r["image"]: r["error"] for r in lines(out) if "error" in r}
    assert errors == {
        "b_missing_image": "missing image", "c_no_annotation": "missing annotation",
        "d_unreadable": "unreadable image", "e_malformed": "malformed annotation",
        "f_unknown_synset": "unknown synset", "g_no_boxes": "no boxes",
        "h_size_mismatch": "size mismatch",
    }
    assert summary["scored"] == 2 and sum(summary["errors"].values()) == 7
    assert summary["errors"]["unknown synset"] == 1
    text = format_summary(summary)
    assert "could not be scored" in text and "unknown synset: 1" in text


def test_a_wrong_directory_fails_at_once(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nope"), str(tmp_path), "--out", str(tmp_path / "r.jsonl")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "images folder" in err and "does not exist" in err
    (tmp_path / "img").mkdir()
    with pytest.raises(FileNotFoundError, match="no .xml annotation files"):
        ILSVRCLocalisation(tmp_path / "img", tmp_path, convvis.Preprocessing())
    with pytest.raises(FileNotFoundError, match="no annotation folder"):
        evaluate(tmp_path / "img", tmp_path / "missing", tmp_path / "r.jsonl", model="not loaded")
    assert not (tmp_path / "r.jsonl").exists()


def test_an_interrupted_run_resumes_to_the_clean_result(tmp_path, net):
    img, xml = write_scenes(tmp_path, net)
    for name in ("ILSVRC2012_val_00000003", "ILSVRC2012_val_00000004"):  # two flipped copies
        flipped = scene(*SCENES[0])[:, ::-1]
        Image.fromarray(np.ascontiguousarray(flipped)).save(img / f"{name}.JPEG", quality=95)
        x0, y0, x1, y1 = SCENES[0][1]
        write_annotation(xml / f"{name}.xml", name, SCENES[0][0],
                         [(imagenet_wnids()[top1(net, img / f"{name}.JPEG")], (320 - x1, y0, 320 - x0, y1))])
    (xml / "ILSVRC2012_val_00000005.xml").write_text("broken")  # an error record resumes too
    clean = tmp_path / "clean.jsonl"
    s_clean = evaluate(img, xml, clean, model=net, workers=0, loader_workers=0, batch_size=2,
                       progress=False)
    part = tmp_path / "part.jsonl"
    evaluate(img, xml, part, model=net, workers=0, loader_workers=0, limit=2, progress=False)
    assert _read_done(part) == {"ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"}
    with open(part, "a") as fh:  # killed in the middle of writing a line
        fh.write('{"image": "ILSVRC2012_val_00000003", "pred')
    # the rest in the process pool, with a loader process: the same file as one clean run
    s_resumed = evaluate(img, xml, part, model=net, workers=2, loader_workers=1, batch_size=2,
                         progress=False)
    assert part.read_bytes() == clean.read_bytes()
    assert s_resumed == s_clean and s_clean["scored"] == 4
    # a finished file is not recomputed
    before = part.read_bytes()
    evaluate(img, xml, part, model=net, workers=0, loader_workers=0, progress=False)
    assert part.read_bytes() == before


def test_classes_only_and_the_published_figures(tmp_path, net, capsys):
    img, xml = write_scenes(tmp_path, net)
    out = tmp_path / "c.jsonl"
    s = evaluate(img, xml, out, model=net, workers=0, loader_workers=0, classes_only=True, top_k=1,
                 progress=False)
    assert "top1_loc_error" not in s and s["top1_cls_error"] == 0.0
    assert all(p["box"] is None for r in lines(out) for p in r["predictions"])
    text = format_summary(s)
    assert "localisation error (%)" not in text and "classification-only error (%)" in text
    paper = PUBLISHED[0]
    assert paper["top5"] == 46.4 and paper["split"] == "ILSVRC-2013 test"
    assert all(p["split"] and p["model"] for p in PUBLISHED)
