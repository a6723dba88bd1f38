"""Device choice (`pick_device`) and the DataLoader worker cap (`make_loader`)."""
import os

import pytest
import torch

from wildcapture import runtime
from wildcapture.runtime import make_loader
from wildcapture.errors import ConfigError
from wildcapture.runtime import available_cpus, pick_device


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without CUDA or MPS, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_cpu_and_auto_without_gpu(no_gpu):
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "xpu", "meta", ""])
def test_unknown_device_names_the_key_and_the_choices(name):
    with pytest.raises(ConfigError) as err:
        pick_device(name)
    assert f"device '{name}' (config key device) is not valid" in str(err.value)
    assert "auto, cpu, cuda, cuda:N, mps" in str(err.value)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_cuda_suggests_cpu_or_auto(no_gpu, name):
    with pytest.raises(ConfigError, match=f"device={name} was asked for but CUDA is not available.*"
                                          "use device=cpu or device=auto"):
        pick_device(name)


def test_cuda_index_beyond_the_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    assert pick_device("cuda", local_rank=1) == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="device=cuda:2 asks for cuda:2 but this machine has 2 CUDA device.*"
                                          "cuda:0 to cuda:1; use device=cpu or device=auto"):
        pick_device("cuda:2")
    with pytest.raises(ConfigError, match="device=cuda asks for cuda:3"):  # a torchrun rank without its GPU
        pick_device("cuda", local_rank=3)


def test_mps_without_mps(no_gpu):
    with pytest.raises(ConfigError, match="device=mps .* MPS .* not available.*use device=cpu or device=auto"):
        pick_device("mps")


def test_workers_are_capped_at_the_available_cpus_with_one_note(capsys):
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cpus() == cpus
    runtime._note_capped_workers.cache_clear()
    cpu = torch.device("cpu")
    loaders = [make_loader(list(range(4)), 2, None, cpus + 3, cpu) for _ in range(3)]
    assert [loader.num_workers for loader in loaders] == [cpus] * 3
    assert capsys.readouterr().out == f"note: num_workers={cpus + 3} capped at the {cpus} CPUs available to this process\n"
    assert make_loader(list(range(4)), 2, None, 0, cpu).num_workers == 0
    assert make_loader(list(range(4)), 2, None, 1, cpu).num_workers == 1
    assert capsys.readouterr().out == ""


def test_one_behind_hands_each_item_over_once_the_next_is_produced():
    produced = []

    def items():
        for i in range(3):
            produced.append(i)
            yield i

    seen = [(item, list(produced)) for item in runtime.one_behind(items())]
    assert seen == [(0, [0, 1]), (1, [0, 1, 2]), (2, [0, 1, 2])]
    assert list(runtime.one_behind(iter(()))) == []


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_to_host_later_gives_float32_host_copies(device):
    values = torch.tensor([[0.5, -2.0], [3.25, 1.0]], dtype=torch.bfloat16, device=device)
    logits = torch.arange(3.0, device=device)
    host = runtime.to_host_later(values, logits)()
    assert [t.device.type for t in host] == ["cpu", "cpu"] and [t.dtype for t in host] == [torch.float32] * 2
    assert host[0].tolist() == [[0.5, -2.0], [3.25, 1.0]] and host[1].tolist() == [0.0, 1.0, 2.0]
    assert runtime.to_host_later()() == ()
