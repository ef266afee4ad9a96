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
