"""pprm.face.embed: the recognizer through the real onnxruntime path, on tiny models built here.

Every expectation is computed independently in numpy (``_face.reference_templates``:
BGR -> RGB, (x - 127.5) / 127.5, 8x8 average pooling, the seeded weight), so a
wrong channel order, normalisation or flatten order fails.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx", reason='the face extra is not installed (pip install -e ".[dev,face]")')
pytest.importorskip("onnxruntime", reason='the face extra is not installed (pip install -e ".[dev,face]")')

import onnx

from pprm.errors import ModelPackError, ParameterError
from pprm.face.embed import ARCFACE_MEAN, ARCFACE_STD, RAW_MEAN, RAW_STD, Recognizer, input_normalisation
from tests.face.support import reference_templates, tiny_recognizer

# float32 inference against a float64 reference, on unit vectors.
TOL = 2e-6


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    rng = np.random.default_rng(42)
    # Channels with different statistics, so a missing BGR -> RGB swap shows.
    base = rng.integers(0, 256, (11, 112, 112, 3)).astype(np.float64)
    base[..., 0] *= 0.3
    base[..., 2] = 255 - base[..., 2] * 0.5
    return base.astype(np.uint8)


def test_names_and_shapes_are_read_from_the_session(tmp_path, crops):
    path = tiny_recognizer(tmp_path / "r.onnx", input_name="pixels_in", output_name="feature_vector", dim=256)
    rec = Recognizer.load(str(path))
    assert (rec.input_name, rec.output_name, rec.dim, rec.fixed_batch) == ("pixels_in", "feature_vector", 256, None)
    out = rec.embed(crops)
    assert out.shape == (11, 256) and out.dtype == np.float32
    np.testing.assert_allclose(out, reference_templates(crops, dim=256), atol=TOL)


def test_templates_are_unit_float32(tmp_path, crops):
    out = Recognizer.load(str(tiny_recognizer(tmp_path / "r.onnx"))).embed(crops)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-6)


def test_channel_order_matters(tmp_path, crops):
    out = Recognizer.load(str(tiny_recognizer(tmp_path / "r.onnx"))).embed(crops)
    swapped = reference_templates(crops[..., ::-1])  # what an implementation without the swap would give
    assert np.abs(out - swapped).max() > 0.05


def test_normalisation_rule_is_read_from_the_graph(tmp_path, crops):
    plain = tiny_recognizer(tmp_path / "plain.onnx")
    selfnorm = tiny_recognizer(tmp_path / "selfnorm.onnx", normalising=True)
    assert input_normalisation(onnx.load(str(plain))) == (ARCFACE_MEAN, ARCFACE_STD)
    assert input_normalisation(onnx.load(str(selfnorm))) == (RAW_MEAN, RAW_STD)
    a, b = Recognizer.load(str(plain)), Recognizer.load(str(selfnorm))
    assert (b.mean, b.std) == (0.0, 1.0)
    # Same weights, normalisation inside or outside the graph: the same templates.
    want = reference_templates(crops)
    np.testing.assert_allclose(a.embed(crops), want, atol=TOL)
    np.testing.assert_allclose(b.embed(crops), want, atol=TOL)


def test_normalising_twice_would_be_caught(tmp_path, crops):
    """The self-normalising model fed (x - 127.5) / 127.5 again gives other templates: the rule is not moot."""
    path = tiny_recognizer(tmp_path / "selfnorm.onnx", normalising=True)
    rec = Recognizer.load(str(path))
    wrong = Recognizer(rec.session, rec.name, (ARCFACE_MEAN, ARCFACE_STD))
    assert np.abs(wrong.embed(crops) - reference_templates(crops)).max() > 0.05


def test_sub_alone_is_not_self_normalisation():
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Sub", ["x", "x"], ["y"])], "g", [x], [y])
    assert input_normalisation(onnx.helper.make_model(graph)) == (ARCFACE_MEAN, ARCFACE_STD)


@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_batching_equals_one_at_a_time(tmp_path, crops, batch_size):
    rec = Recognizer.load(str(tiny_recognizer(tmp_path / "r.onnx")))
    single = np.concatenate([rec.embed(crops[i:i + 1], batch_size=1) for i in range(len(crops))])
    np.testing.assert_allclose(rec.embed(crops, batch_size=batch_size), single, atol=1e-6)


@pytest.mark.parametrize("fixed", [1, 4])
def test_fixed_batch_models(tmp_path, crops, fixed):
    rec = Recognizer.load(str(tiny_recognizer(tmp_path / "r.onnx", batch=fixed)))
    assert rec.fixed_batch == fixed
    # 11 crops: chunks of exactly `fixed`, the last one padded (and the padding dropped).
    np.testing.assert_allclose(rec.embed(crops, batch_size=8), reference_templates(crops), atol=TOL)


def test_symbolic_output_dimension_is_measured(tmp_path, crops):
    rec = Recognizer.load(str(tiny_recognizer(tmp_path / "r.onnx", symbolic_dim=True, dim=300)))
    assert rec.dim == 300
    assert rec.embed(crops[:2]).shape == (2, 300)


def test_zero_embedding_is_a_model_defect(tmp_path, crops):
    rec = Recognizer.load(str(tiny_recognizer(tmp_path / "r.onnx", zero=True)))
    with pytest.raises(ModelPackError, match="non-finite or zero"):
        rec.embed(crops[:1])


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"size": 96}, r"not an ArcFace recognizer: input input\.1\[\?,3,96,96\]"),
    ({"size": 128}, "expected one float"),
])
def test_wrong_input_size_is_refused(tmp_path, kwargs, says):
    with pytest.raises(ModelPackError, match=says):
        Recognizer.load(str(tiny_recognizer(tmp_path / "r.onnx", **kwargs)))


def test_bad_arguments(tmp_path, crops):
    rec = Recognizer.load(str(tiny_recognizer(tmp_path / "r.onnx")))
    with pytest.raises(ParameterError, match="batch_size"):
        rec.embed(crops, batch_size=0)
    with pytest.raises(ParameterError, match="uint8"):
        rec.embed(crops.astype(np.float32))
    with pytest.raises(ParameterError, match="uint8"):
        rec.embed(crops[:, :100])
    assert rec.embed(crops[:0]).shape == (0, 512)


def test_corrupt_file(tmp_path):
    (tmp_path / "r.onnx").write_bytes(b"\x08\x07garbage that is not a protobuf model")
    with pytest.raises(ModelPackError, match=r"r\.onnx is not a loadable ONNX model"):
        Recognizer.load(str(tmp_path / "r.onnx"))
