"""Every KAN family through torch.compile (fullgraph, forward and backward), torch.export, both ONNX exporters
(onnxruntime), TorchScript and jit.trace, on tiny models; timm's exportable flag and fused models under export."""
import warnings

import pytest
import timm
import torch
import torch._dynamo

import timm_kan  # noqa: F401  registers the models
from timm_kan.layers import KAN_FAMILIES, BSplineKANLinear, GroupRational

PREFIXES = [f.prefix for f in KAN_FAMILIES.values()]
KERNEL_PREFIXES = [f.prefix for f in KAN_FAMILIES.values() if f.has_kernel]
TOL = dict(rtol=1e-4, atol=1e-5)


def _model(prefix: str, depth: int = 1, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(f'{prefix}_t16', img_size=32, patch_size=8, depth=depth, num_classes=5, **kwargs)


def _layer(kan_type: str) -> torch.nn.Module:
    """The family's smallest layer (a family without KAN layers: its block), its coefficients drawn so that every
    term matters."""
    torch.manual_seed(0)
    family = KAN_FAMILIES[kan_type]
    if kan_type == 'rational':
        layer = GroupRational(8, groups=2, init='gelu')
    else:
        layer = family.layer(8, 3) if family.layer is not None else family.block(8, 16)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer


def _images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))


def _outputs_and_grads(model: torch.nn.Module, x: torch.Tensor):
    """The output and the gradients of a loss that weighs every output differently, for the input and each parameter."""
    x = x.clone().requires_grad_()
    y = model(x)
    (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).cos()).sum().backward()
    grads = [x.grad] + [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return y.detach(), grads


def _assert_same(got, want, tol=1e-4) -> None:
    torch.testing.assert_close(got[0], want[0], rtol=tol, atol=tol)
    assert len(got[1]) == len(want[1])
    for g, w in zip(got[1], want[1]):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize('prefix', PREFIXES)
def test_whole_model_compiles_fullgraph_without_breaks(prefix):
    """dynamo captures the whole model, forward and backward (AOTAutograd), in one graph; what it runs equals eager."""
    model = _model(prefix).train()
    x = _images(2)
    torch._dynamo.reset()
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    torch._dynamo.reset()
    _assert_same(_outputs_and_grads(torch.compile(model, fullgraph=True, backend='aot_eager'), x),
                 _outputs_and_grads(model, x))


@pytest.mark.parametrize('kan_type', KAN_FAMILIES)
def test_inductor_compiles_each_layer_fullgraph(kan_type):
    """Inductor (C++ on CPU) generates the forward and the custom backward of each family's layer, equal to eager."""
    layer = _layer(kan_type)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(0)) * 2
    large = x.clone()
    large[0, :2] = torch.tensor([40.0, -3e4])  # off the grid, and the rational's x^-4-scaled form
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    for inputs in (x, large):  # eager takes the rational's direct form alone on x, the graph both forms
        _assert_same(_outputs_and_grads(compiled, inputs), _outputs_and_grads(layer, inputs))


def _dynamic_batch():
    return {'x': {0: torch.export.Dim('batch', min=1, max=64)}}


def _onnxruntime_matches(path, model: torch.nn.Module) -> None:
    ort = pytest.importorskip('onnxruntime')
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for batch in (2, 3):
        x = _images(batch)
        with torch.no_grad():
            want = model(x)
        got = torch.from_numpy(session.run(None, {'x': x.numpy()})[0])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('prefix', PREFIXES)
def test_torch_export_and_dynamo_onnx_with_a_dynamic_batch(prefix, tmp_path):
    """torch.export in eval (no grad), and the dynamo ONNX exporter from that program, against onnxruntime."""
    pytest.importorskip('onnxscript')
    model = _model(prefix).eval()
    with torch.no_grad():
        program = torch.export.export(model, (_images(2),), dynamic_shapes=_dynamic_batch())
        for batch in (2, 3):
            torch.testing.assert_close(program.module()(_images(batch)), model(_images(batch)), **TOL)
        torch.onnx.export(program, f=str(tmp_path / 'model.onnx'), dynamo=True, opset_version=18)
    _onnxruntime_matches(tmp_path / 'model.onnx', model)


@pytest.mark.parametrize('prefix', PREFIXES)
def test_torch_export_under_grad(prefix):
    model = _model(prefix).eval()
    program = torch.export.export(model, (_images(2),))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(_images(2)), model(_images(2)), **TOL)


@pytest.mark.parametrize('prefix', PREFIXES)
def test_legacy_onnx_matches_onnxruntime(prefix, tmp_path):
    model = _model(prefix).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the legacy exporter's deprecation and tracer notes
        torch.onnx.export(model, (_images(2),), str(tmp_path / 'model.onnx'), dynamo=False, opset_version=18,
                          input_names=['x'], output_names=['logits'],
                          dynamic_axes={'x': {0: 'batch'}, 'logits': {0: 'batch'}})
    _onnxruntime_matches(tmp_path / 'model.onnx', model)


@pytest.mark.parametrize('prefix', PREFIXES)
def test_jit_script_and_trace_equal_eager(prefix):
    model = _model(prefix, scriptable=True).eval()
    x = _images(3)
    want = _outputs_and_grads(model, x)
    _assert_same(_outputs_and_grads(torch.jit.script(model), x), want)  # autograd through the forwards
    with torch.no_grad():
        traced = torch.jit.trace(model, (_images(2),))  # checks that a second trace gives the same graph
        torch.testing.assert_close(traced(x), want[0], **TOL)


@pytest.mark.parametrize('prefix', KERNEL_PREFIXES)
def test_exportable_selects_the_pytorch_reference(prefix):
    def fused_options(model):  # of the layers that have kernels
        return {m.fused for m in model.modules() if getattr(m, 'kernel', None) or isinstance(m, GroupRational)}

    assert fused_options(_model(prefix)) == {None}  # the default: kernels where they apply
    assert fused_options(_model(prefix, exportable=True)) == {False}
    with timm.layers.set_layer_config(exportable=True):
        assert fused_options(_model(prefix)) == {False}
    with pytest.raises(ValueError, match='kan_fused.*exportable=True'):
        _model(prefix, exportable=True, kan_fused=True)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of every Triton entry point (they still run, through the interpreter on CPU)."""
    pytest.importorskip('triton')
    from timm_kan.kernels import bspline_triton, chebyshev_triton, rational_triton
    calls = []
    for module, name in ((bspline_triton, 'bspline_kan_matmul'), (chebyshev_triton, 'chebyshev_kan_matmul'),
                         (rational_triton, 'group_rational')):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name: calls.append(_n) or _f(*a))
    return calls


@pytest.mark.parametrize('prefix', KERNEL_PREFIXES)
def test_export_of_a_fused_model_takes_the_reference(prefix, kernel_calls, monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv('TRITON_INTERPRET', '1')  # kan_fused=True runs the kernels on CPU tensors
    tiny = dict(embed_dim=16, num_heads=2, kan_hidden=16)  # Triton's interpreter is slow
    fused = _model(prefix, kan_fused=True, **tiny).eval()
    reference = _model(prefix, kan_fused=False, **tiny).eval()
    reference.load_state_dict(fused.state_dict())
    x = _images(2)
    with torch.no_grad():
        fused(x)
        assert kernel_calls, 'the fused model runs its kernels in eager'
        kernel_calls.clear()
        program = torch.export.export(fused, (x,))
        # what the legacy ONNX exporter records (check_trace would rerun the model in eager, with the kernels)
        traced = torch.jit.trace(fused, (x,), check_trace=False)
        assert kernel_calls == []
        torch.testing.assert_close(program.module()(x), reference(x), rtol=0, atol=0)
        torch.testing.assert_close(traced(x), reference(x), rtol=0, atol=0)


def test_adapted_bspline_knots_reach_compiled_and_exported_graphs():
    """A graph capture reads the uniform-grid flag instead of the knots: a load and update_grid keep it right."""
    torch.manual_seed(0)
    adapted = BSplineKANLinear(6, 4)
    adapted.update_grid(torch.randn(200, 6) * 3)
    layer = BSplineKANLinear(6, 4)
    layer.load_state_dict(adapted.state_dict())
    x = torch.randn(5, 6) * 2
    want = adapted(x)
    for module in (layer, adapted):
        torch.testing.assert_close(torch.export.export(module, (x,)).module()(x), want, **TOL)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(x), want, **TOL)
    layer.reset_parameters()  # uniform knots again: the flag changes, so the graph is captured again
    torch.testing.assert_close(compiled(x), layer(x), **TOL)
