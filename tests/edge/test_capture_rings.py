"""The capture stage's rings when frame sizes change (issue 13, item 13): a ring that frames in
flight still point into is retired, never closed under them."""
import numpy as np
import pytest

from edge.config import PipelineConfig
from edge.frame_ring import FrameRing
from edge.stages.capture import CaptureStage

pytestmark = pytest.mark.timeout(30)


def test_a_larger_frame_retires_the_ring_until_the_reader_released_its_frames(tmp_path):
    stage = CaptureStage(PipelineConfig(sources=[], frames_addr=f"ipc://{tmp_path}/f", ring_slots=4))
    try:
        small = stage.ring_for("cam0", 100)
        slot, gen, _ = small.write(np.ones(100, np.uint8), wait_free=False)      # sent, not yet read
        big = stage.ring_for("cam0", 1000)
        assert big is not small and big.slot_bytes >= 1000
        reader = FrameRing.attach(small.path)                                    # the frame in flight is readable
        assert reader.view(slot, gen, (100,)).sum() == 100
        assert stage.ring_for("cam0", 1000) is big and small.path.exists()      # still retired, not closed
        reader.release(slot, gen)
        reader.close()
        stage.ring_for("cam0", 1000)                                             # released: now it goes
        assert not small.path.exists() and stage.retired["cam0"] == []
        assert stage.ring_for("cam0", 1100).slot_bytes >= 1500                   # grows by half at least
    finally:
        for ring in stage.all_rings():
            ring.close()
        stage.close()
