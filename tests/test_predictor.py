import numpy as np
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
        assert r.confidence.shape == (75, 101) and r.confidence.dtype == np.float32
        assert (r.confidence >= 0.25 - 1e-6).all() and (r.confidence <= 1).all()


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
        np.testing.assert_allclose(batched[i].confidence, conf[i].numpy(), atol=1e-6)


def test_preprocess_normalizes_with_checkpoint_statistics(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint(), input_size=(32, 40))
    frame = torch.full((1, 64, 80, 3), 128, dtype=torch.uint8)
    x = predictor.preprocess(frame)
    assert x.shape == (1, 3, 32, 40)
    mean, std = predictor.meta.mean, predictor.meta.std
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(mean, std, strict=True)])
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-5)
