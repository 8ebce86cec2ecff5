import json

import pytest

from vmbackend.machine import accel


@pytest.fixture
def no_probe(monkeypatch):
    calls = []

    def fake_probe(kernel, accel_name="kvm", seconds=accel.PROBE_SECONDS, qemu_bin="x"):
        calls.append(kernel)
        return True, "fake probe says kvm works"

    monkeypatch.setattr(accel, "probe", fake_probe)
    monkeypatch.setattr(accel, "kvm_device_usable", lambda dev="/dev/kvm": True)
    monkeypatch.delenv("WARREN_ACCEL", raising=False)
    return calls


@pytest.mark.parametrize("forced", ["kvm", "tcg"])
def test_a_forced_accelerator_is_used_without_probing(no_probe, forced, tmp_path):
    assert accel.choose(forced, kernel=tmp_path / "k", cache_dir=tmp_path).accel == forced
    assert no_probe == []


def test_the_environment_overrides_auto(no_probe, monkeypatch, tmp_path):
    monkeypatch.setenv("WARREN_ACCEL", "tcg")
    assert accel.choose("auto", kernel=tmp_path / "k", cache_dir=tmp_path).reason == "forced"
    assert no_probe == []


@pytest.mark.parametrize("bad", ["hvf", "", "KVM"])
def test_it_rejects_unknown_accelerators(no_probe, bad, tmp_path):
    with pytest.raises(ValueError):
        accel.choose(bad or "x", cache_dir=tmp_path)


def test_the_verdict_is_probed_once_and_cached_per_kernel_and_qemu(no_probe, tmp_path):
    first = accel.choose(kernel=tmp_path / "k", cache_dir=tmp_path)
    second = accel.choose(kernel=tmp_path / "k", cache_dir=tmp_path)
    assert (first.accel, first.cached) == ("kvm", False)
    assert (second.accel, second.cached) == ("kvm", True)
    assert len(no_probe) == 1
    data = json.loads((tmp_path / "accel.json").read_text())
    assert list(data) == [accel.cache_key()]


def test_a_corrupt_cache_is_probed_again(no_probe, tmp_path):
    (tmp_path / "accel.json").write_text("{not json")
    assert accel.choose(kernel=tmp_path / "k", cache_dir=tmp_path).accel == "kvm"
    assert len(no_probe) == 1


def test_without_a_usable_kvm_device_it_is_tcg(no_probe, monkeypatch, tmp_path):
    monkeypatch.setattr(accel, "kvm_device_usable", lambda dev="/dev/kvm": False)
    assert accel.choose(kernel=tmp_path / "k", cache_dir=tmp_path).accel == "tcg"
    assert no_probe == []


def test_kvm_device_check_handles_a_missing_device(tmp_path):
    assert accel.kvm_device_usable(str(tmp_path / "nokvm")) is False


def test_probe_rejects_a_file_that_is_no_kernel(tmp_path):
    bogus = tmp_path / "vmlinuz"
    bogus.write_bytes(b"not a kernel\n")
    works, reason = accel.probe(bogus, "tcg", seconds=10)
    assert not works
    assert "probe failed" in reason


@pytest.mark.vm
def test_probe_sees_a_real_kernel_boot_under_tcg(tiny_images_root):
    works, reason = accel.probe(tiny_images_root / "tiny" / "vmlinuz", "tcg", seconds=30)
    assert works, reason


@pytest.mark.vm
def test_kvm_probe_gives_a_verdict_within_its_deadline(tiny_images_root):
    # On these machines KVM guests hang (or QEMU aborts on -cpu host): the probe must say no
    # and come back; on a real hypervisor it says yes. Either way it returns and leaves nothing.
    works, reason = accel.probe(tiny_images_root / "tiny" / "vmlinuz", "kvm", seconds=8)
    assert reason.startswith("kvm")
    assert isinstance(works, bool)
