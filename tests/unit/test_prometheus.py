"""The one Prometheus text reader (csm_common/prometheus.py) that the fleet's probe and the box's watchdog share."""

from __future__ import annotations

import math

from csm_common.prometheus import Sample, samples, values
from csm_runtime.watchdog import parse_activity
from deploy.fleet.probe import parse_metrics

PAGE = """# HELP csm_requests_total Requests.
# TYPE csm_requests_total counter
csm_requests_total{route="/v1/audio/speech",status="200"} 3.0
csm_requests_total{method="POST", route="/v1/audio/speech",status="201"} 2.0
csm_requests_total{route="/v1/audio/speech",status="503"} 7.0
csm_requests_total{route="/health",status="200"} 9.0
csm_audio_seconds_total 12.5 1700000000000
csm_active_streams 1.0
csm_queue_depth +Inf
csm_note{text="a \\"quoted\\" word"} 1
not a sample line
csm_last_request_timestamp_seconds 1.7e9
"""


def test_samples_read_names_labels_values_and_skip_the_rest():
    got = list(samples(PAGE))
    assert got[0] == Sample("csm_requests_total", {"route": "/v1/audio/speech", "status": "200"}, 3.0)
    assert got[1].labels == {"method": "POST", "route": "/v1/audio/speech", "status": "201"}
    assert ("csm_audio_seconds_total", 12.5) in [(s.name, s.value) for s in got]  # a timestamp after the value
    assert math.isinf(next(s.value for s in got if s.name == "csm_queue_depth"))
    assert next(s.labels for s in got if s.name == "csm_note") == {"text": 'a "quoted" word'}
    assert len(got) == 9


def test_values_keeps_the_named_metrics():
    assert values(PAGE, {"csm_active_streams", "csm_absent"}) == {"csm_active_streams": 1.0}


def test_probe_and_watchdog_read_the_same_page():
    m = parse_metrics(PAGE)
    assert m["speech_requests"] == 5.0  # 2xx speech only
    assert (m["audio_seconds"], m["active_streams"]) == (12.5, 1.0)
    seen = parse_activity(PAGE)
    assert seen.busy and seen.last_request == 1.7e9
