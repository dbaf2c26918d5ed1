"""push against a Hub that hangs or a push that is interrupted: bounded in time, one line, nothing left behind.

Before, ``timm-kan push`` waited forever on a Hub that accepts the connection and never answers, and Ctrl-C
printed a traceback. The servers here listen on 127.0.0.1 only.
"""
import socket
import time
from pathlib import Path

import huggingface_hub
import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from huggingface_hub.utils import _http

from timm_kan.cli import main as cli_main
from timm_kan.hub import push_to_hub

from conftest import SMALL
from hub_server import HubRecorder, SilentHub

TOKEN = 'hf_dummy_token'


def _point_at(monkeypatch, endpoint: str) -> None:
    # huggingface_hub reads HF_ENDPOINT once, at import: set the variable and the constants it became
    monkeypatch.setenv('HF_ENDPOINT', endpoint)
    monkeypatch.setattr(hf_constants, 'ENDPOINT', endpoint)
    monkeypatch.setattr(hf_constants, 'HUGGINGFACE_CO_URL_TEMPLATE',
                        endpoint + '/{repo_id}/resolve/{revision}/{filename}')


@pytest.fixture
def clean(tmp_path, monkeypatch) -> Path:
    """An empty temporary-files folder and an empty current folder: both must stay empty."""
    (tmp_path / 'tmp').mkdir()
    (tmp_path / 'cwd').mkdir()
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path / 'tmp'))
    monkeypatch.chdir(tmp_path / 'cwd')
    factory = _http._GLOBAL_CLIENT_FACTORY
    yield tmp_path
    assert not list((tmp_path / 'tmp').iterdir()) and not list((tmp_path / 'cwd').iterdir())
    assert _http._GLOBAL_CLIENT_FACTORY is factory  # push restores huggingface_hub's client factory


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model('chebykan_vit_t16', num_classes=3, **SMALL).eval()


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    path = tmp_path / 'ckpt.pth'
    torch.save(dict(state_dict=_model().state_dict(), arch='chebykan_vit_t16', model_args=dict(SMALL)), path)
    return path


def _push_cli(checkpoint: Path, *extra: str) -> int:
    return cli_main(['push', str(checkpoint), '--model', 'chebykan_vit_t16', '--repo-id', 'org/n', '--token', TOKEN,
                     *extra])


def test_push_to_hub_times_out_on_a_silent_hub(monkeypatch, clean):
    with SilentHub() as hub:
        _point_at(monkeypatch, hub.endpoint)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=rf'the Hub at {hub.endpoint} did not answer within 0.5 s'):
            push_to_hub(_model(), 'org/n', token=TOKEN, timeout=0.5)
        assert time.monotonic() - start < 5 and hub.accepted >= 1


def test_push_cli_timeout_is_one_line(monkeypatch, capsys, clean, checkpoint):
    with SilentHub() as hub:
        _point_at(monkeypatch, hub.endpoint)
        start = time.monotonic()
        assert _push_cli(checkpoint, '--timeout', '0.5') == 2
        assert time.monotonic() - start < 5
    assert capsys.readouterr().err == (
        f'error: push: the Hub at {hub.endpoint} did not answer within 0.5 s (--timeout)\n')


def test_push_cli_to_a_closed_port_is_one_line(monkeypatch, capsys, clean, checkpoint):
    with socket.create_server(('127.0.0.1', 0)) as sock:
        endpoint = f'http://127.0.0.1:{sock.getsockname()[1]}'
    _point_at(monkeypatch, endpoint)  # nothing listens there any more: connections are refused
    assert _push_cli(checkpoint, '--timeout', '2') == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: cannot reach the Hub at {endpoint}: ') and len(err.splitlines()) == 1, err


def test_timeout_bounds_requests_that_pass_their_own(monkeypatch, clean):
    """file_exists asks for a 10 s timeout of its own: --timeout bounds that request too."""
    with HubRecorder(hang_head=True) as hub:
        _point_at(monkeypatch, hub.endpoint)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match='did not answer within 0.5 s'):
            push_to_hub(_model(), 'org/n', token=TOKEN, timeout=0.5)
        assert time.monotonic() - start < 5
    assert hub.created and ('HEAD', '/org/n/resolve/main/README.md') in hub.requests and not hub.commits


@pytest.mark.parametrize('timeout', [0.0, -1.0, float('nan'), float('inf')])
def test_push_to_hub_refuses_a_timeout_that_is_not_a_positive_number(timeout, clean):
    with pytest.raises(ValueError, match='timeout must be a finite number of seconds > 0'):
        push_to_hub(_model(), 'org/n', token=TOKEN, timeout=timeout)


def _interrupted(*args, **kwargs):
    raise KeyboardInterrupt


def test_push_to_hub_interrupted_leaves_nothing(monkeypatch, clean):
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', _interrupted)
    with HubRecorder() as hub:
        _point_at(monkeypatch, hub.endpoint)
        with pytest.raises(KeyboardInterrupt):
            push_to_hub(_model(), 'org/n', token=TOKEN)
    assert hub.created and not hub.commits


def test_push_cli_interrupted_is_one_line_and_leaves_nothing(monkeypatch, capsys, clean, checkpoint):
    monkeypatch.setattr(huggingface_hub.HfApi, 'upload_folder', _interrupted)
    with HubRecorder() as hub:
        _point_at(monkeypatch, hub.endpoint)
        assert _push_cli(checkpoint) == 130
    assert capsys.readouterr().err == 'interrupted\n'
    assert hub.created and not hub.commits


def test_push_after_a_timeout_uploads(monkeypatch, capsys, clean, checkpoint):
    """A timed-out push leaves huggingface_hub as it found it: the next push to a Hub that answers goes through."""
    with SilentHub() as silent:
        _point_at(monkeypatch, silent.endpoint)
        assert _push_cli(checkpoint, '--timeout', '0.5') == 2
    with HubRecorder() as hub:
        _point_at(monkeypatch, hub.endpoint)
        assert _push_cli(checkpoint, '--timeout', '5') == 0
    assert hub.commits and 'model.safetensors' in hub.commits[0]
    assert 'pushed to org/n' in capsys.readouterr().out
