"""The demo's figures on how the policy kept pace, from the chunks it saw and the graph log."""
from __future__ import annotations

from vla_bringup.cli.demo import chunk_figures


def test_chunk_figures_report_inference_frame_age_gaps_and_lost_reports(tmp_path):
    log = tmp_path / "demo_graph.log"
    log.write_text("[policy] [INFO] ready\n"
                   "[skill_controller] [ERROR] policy lost (DDS liveliness): controlled stop\n"
                   "[skill_controller] [ERROR] policy lost (its process exited): idle\n")
    # (wall receive time, camera stamp, inference ms): chunks 0.3, 0.3 and 0.9 s apart
    chunks = [(10.0, 9.6, 200.0), (10.3, 9.9, 220.0), (10.6, 10.2, 240.0),
              (11.5, 11.0, 400.0)]
    figures = chunk_figures(chunks, str(log))
    assert figures["chunks"] == 4
    assert figures["policy_lost_reports"] == 2
    assert figures["policy_inference_ms"]["p50"] == 230.0
    assert figures["camera_to_chunk_ms"]["p50"] == 400.0
    assert figures["chunk_interval_ms"]["p50"] == 300.0
    assert figures["chunk_interval_ms"]["max"] == 900.0


def test_chunk_figures_without_chunks_say_none(tmp_path):
    log = tmp_path / "demo_graph.log"
    log.write_text("")
    figures = chunk_figures([], str(log))
    assert figures["chunks"] == 0 and figures["policy_lost_reports"] == 0
    assert figures["policy_inference_ms"]["p50"] is None
    assert figures["chunk_interval_ms"]["max"] is None
