import numpy as np
import pytest

from surgseg.cues import FieldOfView, find_instruments
from surgseg.errors import ConfigError
from surgseg.predictor import Prediction, Predictor
from surgseg.synthetic import SyntheticSurgery
from surgseg.tip_refine import TipCrop, check_engine, crop_predictor, refine


def test_the_crop_is_twice_the_first_pass_scale_and_stays_in_the_frame():
    """160 model pixels at twice the first pass's scale: a 640×512 frame segmented at 320×256
    gets 160×160 crops (the frame's own pixels) and windows of ±48; 1080p at 1280×1024, 84×120
    (each axis at its own scale); crops near the border are moved inside."""
    crop = TipCrop.for_frames((512, 640), (256, 320))
    assert crop == TipCrop((160, 160), (48, 48))
    assert TipCrop.for_frames((1080, 1920), (1024, 1280)) == TipCrop((84, 120), (25, 36))
    assert crop.box((320.4, 255.6), (512, 640)) == (176, 240)
    assert crop.box((3.0, 500.0), (512, 640)) == (352, 0)  # (y, x): bottom-left corner
    assert TipCrop.for_frames((100, 120), (16, 16)).size == (100, 120)  # never past the frame


class _Limit:
    """An engine that takes at most ``limit`` crops a call (None: any number)."""

    def __init__(self, limit: int | None):
        self.limit = limit

    def max_batch(self, size: tuple[int, int]) -> int | None:
        return self.limit


class _Oracle:
    """Segments crops of one frame perfectly: its truth at the crop's place."""

    def __init__(self, truth: np.ndarray, limit: int | None = None):
        self.truth, self.engine = truth, _Limit(limit)
        self.calls: list[int] = []

    def predict(self, patches):
        self.calls.append(len(patches))
        out = []
        for patch in patches:  # a view into the frame: find where it starts
            offset = patch.__array_interface__["data"][0] - self.frame_address
            y, x = divmod(offset // 3, self.width)
            h, w = patch.shape[:2]
            out.append(Prediction(self.truth[y : y + h, x : x + w].copy(),
                                  np.full((h, w), 250, np.uint8)))  # fmt: skip
        return out


def test_tips_are_read_from_the_finer_look_and_the_first_pass_is_left_alone():
    """With a first pass whose instruments stop short (their last 15 pixels along the axis
    lost) and a perfect look at each crop, the refined tips land on the true ones (the first
    pass's do not); one call segments every crop of the batch, or as many as the engine's
    limit needs; a frame without instruments keeps its prediction; the given masks are not
    changed."""
    surgery = SyntheticSurgery(width=640, height=512, seed=7, num_instruments=2)
    frame = surgery.render(0)
    truth = frame.parts
    view = FieldOfView.from_image(frame.image)
    exact = find_instruments(truth, task="parts", view=view)
    short = truth.copy()
    yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]]
    for inst in exact:  # the first pass: every tip cut back by 15 px along its axis
        (tx, ty), (ax, ay) = inst.tip, inst.axis
        near = (xx - tx) ** 2 + (yy - ty) ** 2 < 40**2
        short[near & ((xx - tx) * ax + (yy - ty) * ay > -15)] = 0
    first = Prediction(short, np.full(truth.shape, 250, np.uint8))
    empty = Prediction(np.zeros_like(truth), np.full(truth.shape, 250, np.uint8))
    found = find_instruments(short, task="parts", view=view)
    assert len(found) == len(exact) >= 1

    def errors(instruments):
        return [min(np.hypot(*np.subtract(i.tip, e.tip)) for i in instruments) for e in exact]

    assert min(errors(found)) > 10

    before = short.copy()
    results = []
    for limit, calls in ((None, [2 * len(found)]), (1, [1] * 2 * len(found))):
        oracle = _Oracle(truth, limit)
        oracle.frame_address, oracle.width = frame.image.__array_interface__["data"][0], 640
        refined = refine([frame.image, frame.image, frame.image], [first, empty, first],
                         [found, [], found], crops=oracle, first_input_size=(256, 320))  # fmt: skip
        assert oracle.calls == calls
        assert refined[1] is empty and np.array_equal(first.mask, before)
        assert np.array_equal(refined[0].mask, refined[2].mask)
        assert max(errors(find_instruments(refined[0].mask, task="parts", view=view))) < 2
        results.append(refined[0].mask)
    assert np.array_equal(*results)  # in chunks or at once, the same


class _FixedSizeEngine:
    name = "fixed"

    def max_batch(self, size: tuple[int, int]) -> int | None:
        return 0


def test_refinement_needs_an_engine_that_runs_the_crops(make_checkpoint):
    predictor = Predictor.from_checkpoint(make_checkpoint("parts"))
    crops = crop_predictor(predictor)  # torch runs any size
    assert crops.engine is predictor.engine and crops.input_size == (160, 160)
    predictor.engine = _FixedSizeEngine()
    with pytest.raises(ConfigError, match=r"refine_tips needs an engine that runs 160×160 crops "
                                          r".* fixed runs only its own"):  # fmt: skip
        check_engine(predictor)
