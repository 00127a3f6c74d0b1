"""The one GPU naming table both planes share."""

import pytest

from csm_common import gpus


@pytest.mark.parametrize("name", ["4090", "RTX 4090", "rtx_4090", "rtx-4090", "RTX4090"])
def test_aliases_resolve_to_one_gpu(name):
    gpu = gpus.resolve(name)
    assert (gpu.vast_name, gpu.slug) == ("RTX 4090", "rtx-4090")


def test_unknown_alias_lists_the_known_ones():
    with pytest.raises(gpus.UnknownGpuError) as err:
        gpus.resolve("9999")
    assert "known:" in str(err.value) and "4090" in str(err.value)


@pytest.mark.parametrize(
    ("nvml_name", "slug"),
    [
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("NVIDIA GeForce RTX 3090 Ti", "rtx-3090-ti"),
        ("NVIDIA GeForce RTX 3090", "rtx-3090"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm4"),
        ("NVIDIA A100 80GB PCIe", "a100-pcie"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA RTX A6000", "rtx-a6000"),
        ("NVIDIA Quadro Imaginary 9000", "quadro-imaginary-9000"),
    ],
)
def test_device_names_map_to_profile_slugs(nvml_name, slug):
    assert gpus.slug_for_device(nvml_name) == slug


def test_slugs_are_unique():
    slugs = [g.slug for g in gpus.GPUS]
    assert len(slugs) == len(set(slugs))


def test_cpu_slug():
    assert gpus.cpu_slug("AMD EPYC 7B13 64-Core Processor") == "cpu-amd-epyc-7b13"
    assert gpus.cpu_slug("Intel(R) Xeon(R) CPU @ 2.20GHz") == "cpu-intel-xeon"
