"""deploy/providers/vastai_cli.py against the vast.ai emulator through the REAL vastai CLI (vast.ai itself is what is emulated)."""

from __future__ import annotations

import pytest

from deploy.providers.records import State
from deploy.providers.vast_records import map_status
from deploy.providers.vastai_cli import VastCli, VastError, find_vastai


@pytest.fixture
def cli(vast_env):
    return VastCli(timeout_s=30)


def test_search_filters_and_sorts_by_price(cli, vast):
    offers = cli.search_offers("RTX 4090", max_price=0.5, min_reliability=0.98, min_cuda=12.4, disk_gb=40)
    assert [o.id for o in offers] == ["1001", "1002"]
    assert offers[0].price_usd_h == 0.35 and offers[0].host_id == "11"
    method, path = [r for r in vast.requests if r[1] == "/api/v0/bundles/"][0]
    assert method == "POST"


def test_create_show_destroy_and_charges(cli, vast):
    iid = cli.create_instance("1001", image="img", disk_gb=20, label="csm-deploy:t:1")
    box = cli.show_instance(iid)
    assert box.label == "csm-deploy:t:1" and box.state in (State.PENDING, State.RUNNING)
    vast.advance(3600)  # one emulated hour
    charges = cli.charges(0, vast.now() + 10)
    (row,) = [c for c in charges if c["source"] == f"instance-{iid}"]
    assert row["amount"] == pytest.approx(0.35, rel=0.01)
    assert [b.id for b in cli.show_instances()] == [iid]
    cli.destroy_instance(iid)
    assert cli.show_instance(iid) is None
    assert cli.show_instances() == []


@pytest.mark.parametrize("mode", ["html", "truncated", "shape"])
def test_garbage_listing_raises(cli, vast, mode):
    vast.garbage_listing(mode)
    with pytest.raises(VastError) as err:
        cli.show_instances()
    assert "show instances" in str(err.value)


def test_refused_create_carries_status_and_message(cli, vast):
    vast.refuse(1001)
    with pytest.raises(VastError) as err:
        cli.create_instance("1001", image="img", disk_gb=20, label="x")
    assert err.value.status_code == 404 and "no_such_ask" in str(err.value)  # vast's documented answer


def test_500_and_429_are_retried_until_the_retry_window_closes(cli, vast):
    vast.fail("GET", r"^/api/v1/instances/$", 500, times=2)
    assert cli.show_instances() == [] and [c for c, _ in cli.retries] == ["show instances"] * 2
    vast.fail("GET", r"^/api/v1/instances/$", 429, times=4)  # more than the CLI's own three quick tries
    assert cli.show_instances() == []
    quick = VastCli(timeout_s=30, retry_s=2)
    vast.fail("GET", r"^/api/v1/instances/$", 500, times=-1)
    with pytest.raises(VastError) as err:
        quick.show_instances()
    assert err.value.status_code == 500 and "tried" in str(err.value)
    vast.faults.clear()
    vast.fail("PUT", r"^/api/v0/asks/", 500)  # a create that failed may have gone through: never repeated
    with pytest.raises(VastError) as err:
        cli.create_instance("1001", image="img", disk_gb=20, label="x")
    assert err.value.status_code == 500 and vast.count("PUT", r"^/api/v0/asks/") == 1


def test_bad_key_is_401(cli, vast, monkeypatch):
    monkeypatch.setenv("VAST_API_KEY", "nope")
    with pytest.raises(VastError) as err:
        cli.show_instances()
    assert err.value.status_code == 401 and "nope" not in str(err.value)


def test_find_vastai_prefers_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VASTAI_BIN", "/opt/x/vastai")
    assert find_vastai() == "/opt/x/vastai"
    monkeypatch.delenv("VASTAI_BIN")
    assert find_vastai().endswith(".venv-vastai/bin/vastai")


def test_missing_binary_is_a_vast_error():
    with pytest.raises(VastError, match="cannot run"):
        VastCli("/nonexistent/vastai").run("show", "instances")


def test_status_table_defaults_to_pending():
    assert map_status("running") is State.RUNNING
    assert map_status("exited") is State.STOPPED
    assert map_status("offline") is State.FAILED
    assert map_status("something-new") is State.PENDING
    assert map_status(None) is State.PENDING
