"""A host's capacity by resources: sums, the fit rule, the defaults derived from the machine."""

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from vmbackend.protocol.capacity import (
    Resources,
    Size,
    default_disk_gb,
    overcommitted_vcpus,
    refusal,
    usage,
)

TOTALS = Resources(memory_total_mb=4096, vcpus_total=8, disk_total_gb=20)


def test_usage_sums_what_the_vms_hold_and_free_is_what_is_left():
    used = usage(TOTALS, [Size(1024, 1, 4), Size(2048, 2, 8)])
    assert (used.memory_used_mb, used.vcpus_used, used.disk_used_gb) == (3072, 3, 12)
    assert (used.memory_free_mb, used.vcpus_free, used.disk_free_gb) == (1024, 5, 8)
    fields = used.heartbeat_fields()
    assert fields["memory_total_mb"] == 4096 and fields["memory_free_mb"] == 1024
    assert fields["disk_free_gb"] == 8 and fields["vcpus_used"] == 3


def test_a_vm_that_fits_exactly_fits_and_one_mib_more_does_not():
    used = usage(TOTALS, [Size(3072, 7, 16)])
    assert refusal(used, Size(1024, 1, 4)) is None
    reason = refusal(used, Size(1025, 2, 5))
    assert reason is not None
    assert "1025 MiB of memory (1024 free)" in reason
    assert "2 vCPUs (1 free)" in reason
    assert "5 GB of disk (4 free)" in reason


def test_an_overfull_host_reports_no_negative_free_room():
    used = usage(Resources(512, 1, 1), [Size(1024, 2, 4)])
    assert (used.memory_free_mb, used.vcpus_free, used.disk_free_gb) == (0, 0, 0)
    assert refusal(used, Size(256, 1, 1)) is not None


def test_vcpus_are_the_cores_times_the_overcommit_rounded_down():
    assert overcommitted_vcpus(2, 4.0) == 8
    assert overcommitted_vcpus(3, 1.5) == 4
    assert overcommitted_vcpus(0, 16) == 0


def test_the_default_disk_is_the_free_space_of_the_nearest_existing_folder(tmp_path: Path):
    here = default_disk_gb(tmp_path)
    assert here == default_disk_gb(tmp_path / "not" / "made" / "yet")
    assert here >= 0


sizes = st.builds(Size, st.integers(0, 70_000), st.integers(0, 64), st.integers(0, 2000))


@given(st.lists(sizes, max_size=12), sizes, st.builds(Resources, *(st.integers(0, 2**20),) * 3))
def test_a_vm_fits_exactly_when_every_resource_stays_within_the_total(held, want, totals):
    used = usage(totals, held)
    fits = (
        used.memory_used_mb + want.memory_mb <= totals.memory_total_mb
        and used.vcpus_used + want.vcpus <= totals.vcpus_total
        and used.disk_used_gb + want.disk_gb <= totals.disk_total_gb
    )
    assert (refusal(used, want) is None) == fits
