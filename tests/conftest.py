import matplotlib
import pytest

matplotlib.use("Agg")  # tests never open windows


@pytest.fixture(scope="session")
def net():
    """The embedded default model, loaded once per test process."""
    import convvis

    return convvis.load_model("efficientnet_lite0", device="cpu")
