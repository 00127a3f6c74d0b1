"""A GPU whose kernels the runtime's pinned torch lacks is refused by the command that builds the provision options,
before anything is rented (the options themselves read no file). The real vastai CLI against the emulator."""

from __future__ import annotations

from csm_common.gpus import resolve
from deploy.provision.layout import runtime_torch
from deploy.provision.options import ProvisionOptions, RuntimeOptions, check_torch
from deploy.settings import DEFAULT_IMAGE
from tests.conftest import run_deploy


def test_the_lock_pins_a_torch_older_than_blackwell_needs():
    pinned = runtime_torch()
    assert pinned is not None and pinned.split(".")[:2] < ["2", "7"]  # the premise of the next test
    check_torch(resolve("4090"), pinned)  # no minimum: never refused
    check_torch(resolve("5090"), None)  # no source checkout: nothing to compare with


def test_options_of_such_a_gpu_build_without_reading_the_lock():
    options = ProvisionOptions(gpu=resolve("5090"), image=DEFAULT_IMAGE, runtime=RuntimeOptions())
    assert options.gpu is not None and options.gpu.alias == "5090"


def test_provision_refuses_it_before_renting(vast, vast_env):
    vast.add_offer(id=5002, gpu_name="RTX 5090", dph_total=0.70, cuda_max_good=12.8, gpu_ram=32607)
    for gpus in ("5090", "4090,5090"):
        res = run_deploy(["provision", "--gpu", gpus, "--max-offers", "1"], vast_env)
        assert res.returncode == 1, res.stderr[-2000:]
        assert "needs PyTorch >= 2.7" in res.stderr.strip().splitlines()[-1]
    assert vast.count("PUT", r"^/api/v0/asks/") == 0
