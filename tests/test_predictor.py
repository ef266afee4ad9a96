import numpy as np
import pytest
import torch

from surgseg.predictor import Predictor


def test_masks_come_back_at_frame_size(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint("parts"))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (75, 101, 3), dtype=np.uint8) for _ in range(3)]
    results = predictor.predict(frames)
    assert len(results) == 3
    for r in results:
        assert r.mask.shape == (75, 101) and r.mask.dtype == np.uint8
        assert r.mask.max() < 4
        assert r.confidence.shape == (75, 101) and r.confidence.dtype == np.uint8
        assert (r.confidence >= 64).all()  # a winner among 4 classes has p ≥ 0.25


def test_numpy_entry_matches_torch_core_and_batching(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint("binary"))
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(2)]
    batched = predictor.predict(frames)
    single = [predictor.predict([f])[0] for f in frames]
    labels, conf = predictor.predict_torch(torch.from_numpy(np.stack(frames)))
    for i in range(2):
        np.testing.assert_array_equal(batched[i].mask, single[i].mask)
        np.testing.assert_array_equal(batched[i].mask, labels[i].numpy())
        np.testing.assert_array_equal(batched[i].confidence, conf[i].numpy())


def test_preprocess_normalizes_with_checkpoint_statistics(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint(), input_size=(32, 40))
    frame = torch.full((1, 64, 80, 3), 128, dtype=torch.uint8)
    x = predictor.preprocess(frame)
    assert x.shape == (1, 3, 32, 40)
    mean, std = predictor.meta.mean, predictor.meta.std
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(mean, std, strict=True)])
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-5)


def test_confidence_is_the_winning_softmax_probability(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint("parts"))
    frame = np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    result = predictor.predict([frame])[0]
    x = predictor.preprocess(torch.from_numpy(frame[None]))
    with torch.inference_mode():
        probs = predictor.engine.infer(x).softmax(dim=1)[0]  # input size = frame size here
    top, labels = probs.max(dim=0)
    np.testing.assert_array_equal(result.mask, labels.numpy())
    assert np.abs(result.confidence.astype(int) - (top.numpy() * 255).round()).max() <= 1


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([np.zeros((8, 8), np.uint8)], r"shape \(8, 8\); frames must be RGB"),
        (np.zeros((8, 8, 3), np.uint8), r"pass \[frame\]"),
        ([np.zeros((8, 8, 3), np.float32)], "float32; frames must be uint8"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)], "one frame size"),
        ([], "at least one frame"),
    ],
    ids=["grey", "bare-array", "float01", "mixed-sizes", "empty"],
)
def test_predict_refuses_what_it_cannot_segment(make_checkpoint, frames, message):
    predictor = Predictor.from_checkpoint(make_checkpoint())
    with pytest.raises(ValueError, match=message):
        predictor.predict(frames)


def test_predict_takes_a_batch_array(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint())
    batch = np.random.default_rng(3).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    as_list = predictor.predict(list(batch))
    for a, b in zip(predictor.predict(batch), as_list, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)


def test_normalization_tensors_are_built_once_per_device(make_checkpoint, monkeypatch):
    """A tensor built from Python numbers per batch is, on a GPU, a blocking host-to-device
    copy per batch: ``Preprocess`` builds mean and std once per device and reuses them."""
    import surgseg.preprocess

    predictor = Predictor.from_checkpoint(make_checkpoint(), input_size=(32, 40))
    frames = torch.randint(0, 256, (2, 64, 80, 3), dtype=torch.uint8)
    first = predictor.preprocess(frames)
    cached = predictor.geometry.stats("cpu")
    built = []
    real_tensor = torch.tensor
    monkeypatch.setattr(surgseg.preprocess.torch, "tensor",
                        lambda *a, **k: built.append(a) or real_tensor(*a, **k))  # fmt: skip
    again = predictor.preprocess(frames)
    assert built == []  # nothing built for the second batch
    assert all(a is b for a, b in zip(predictor.geometry.stats("cpu"), cached, strict=True))
    assert list(predictor.geometry._stats) == [torch.device("cpu")]
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shared", [False, True])
def test_nothing_synchronizes_outside_download(make_checkpoint, shared):
    """At most one synchronization per batch, in ``download``: ``upload`` and ``launch`` run
    under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronizing call
    (a blocking copy, ``.item()``, a stream or device synchronize). With a shared arena the
    results land there, page-locked, without a blocking copy either."""
    from surgseg.cue_workers import SharedArena

    predictor = Predictor.from_checkpoint(make_checkpoint("parts"), device="cuda")
    arena = SharedArena(1 << 20) if shared else None
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(4)]
    reference = predictor.predict(frames)  # warm-up: kernels chosen, caches and buffers made
    predictor.download(predictor.launch(predictor.upload(frames), into=arena))
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        pending = [predictor.launch(predictor.upload(frames), into=arena) for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    for batch in pending:
        for got, ref in zip(predictor.download(batch), reference, strict=True):
            np.testing.assert_array_equal(got.mask, ref.mask)
            np.testing.assert_array_equal(got.confidence, ref.confidence)
            if shared:
                assert arena.offset(got.mask) is not None
                assert arena.offset(got.confidence) is not None


def test_results_land_in_a_shared_arena_where_it_has_room(make_checkpoint):
    """``launch(into=arena)`` writes the uint8 results straight into the arena (where the cue
    workers read them without a copy), equal to those in torch's memory; with no room left
    they come back in torch's memory, still equal."""
    import gc

    from surgseg.cue_workers import SharedArena

    predictor = Predictor.from_checkpoint(make_checkpoint("parts"))
    rng = np.random.default_rng(6)
    frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(3)]
    reference = predictor.predict(frames)
    arena = SharedArena(2 * 3 * 40 * 64)  # room for one batch's mask and confidence
    kept = predictor.download(predictor.launch(predictor.upload(frames), into=arena))
    full = predictor.download(predictor.launch(predictor.upload(frames), into=arena))
    for got, spilled, ref in zip(kept, full, reference, strict=True):
        assert arena.offset(got.mask) is not None and arena.offset(got.confidence) is not None
        assert arena.offset(spilled.mask) is None and arena.offset(spilled.confidence) is None
        for result in (got, spilled):
            np.testing.assert_array_equal(result.mask, ref.mask)
            np.testing.assert_array_equal(result.confidence, ref.confidence)
    assert arena.misses >= 1
    del kept, got, result
    gc.collect()  # the last view of the first batch is gone: its slots are free again
    again = predictor.download(predictor.launch(predictor.upload(frames), into=arena))
    assert arena.offset(again[0].mask) is not None


def test_an_input_size_override_reaches_the_engine(make_checkpoint, monkeypatch):
    """``input_size=`` changes the meta the engine is built from, so the TensorRT profile's
    default (and INT8 calibration) use the size the Predictor feeds, not the training size."""
    import surgseg.predictor
    from surgseg.engines.tensorrt_engine import default_profile

    seen = []
    real_create = surgseg.predictor.create_engine

    def spy(name, **kwargs):
        seen.append(kwargs["meta"])
        return real_create(name, **kwargs)

    monkeypatch.setattr(surgseg.predictor, "create_engine", spy)
    predictor = Predictor.from_checkpoint(make_checkpoint(), input_size=(32, 48))
    (meta,) = seen
    assert meta.input_size == predictor.input_size == predictor.meta.input_size == (32, 48)
    assert default_profile(meta.input_size).max == (8, 3, 32, 48)
    frames = torch.zeros(1, 64, 80, 3, dtype=torch.uint8)
    assert predictor.preprocess(frames).shape == (1, 3, 32, 48)
    seen.clear()
    Predictor.from_checkpoint(make_checkpoint())  # no override: the checkpoint's own size
    assert seen[0].input_size == (64, 80)


@pytest.mark.parametrize(
    ("size", "ok"),
    [([256, 320], (256, 320)), ((256.0, 320), (256, 320)), (np.array([64, 80]), (64, 80)),
     (["256", "320"], None), ("256", None), ([True, 320], None), ([256, float("inf")], None),
     ([10, 10], None), ([256, 300], None), ([256], None)],
)  # fmt: skip
def test_input_size_takes_two_whole_numbers_the_network_can_run(size, ok):
    from surgseg.errors import ConfigError
    from surgseg.preprocess import check_input_size

    if ok is not None:
        assert check_input_size(size) == ok
    else:
        with pytest.raises(ConfigError, match="input_size must be"):
            check_input_size(size)
