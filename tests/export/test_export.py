"""Compiled and exported DynamicConv2d graphs compute what eager mode computes, at any batch."""

import pytest
import torch
from torch import nn

from dyconv.layers import DynamicConv2d, set_temperature


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        DynamicConv2d(3, 8, 3, padding=1),  # dense 3x3
        nn.BatchNorm2d(8),
        nn.ReLU(),
        DynamicConv2d(8, 8, 3, stride=2, padding=1, groups=8),  # depthwise
        DynamicConv2d(8, 16, 1),  # pointwise
        nn.ReLU(),
        DynamicConv2d(16, 16, 3, padding="same", padding_mode="reflect", bias=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    ).eval()
    return _sharpen(net)


def _sharpen(net: nn.Module) -> nn.Module:
    """Temperature 1 and attention logits far from uniform, so every kernel matters."""
    set_temperature(net, 1.0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, DynamicConv2d):
                m.attn_fc2.bias.normal_(0, 2)
    return net


def test_torchscript_matches_eager():
    net = _net()
    scripted = torch.jit.script(net)
    for b in (1, 5):
        x = torch.randn(b, 3, 16, 16)
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)


def test_torch_export_dynamic_batch():
    net = _net()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(net, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},))
    for b in (1, 5):
        x = torch.randn(b, 3, 16, 16)
        torch.testing.assert_close(ep.module()(x), net(x), rtol=1e-5, atol=1e-5)


def test_onnx_runs_in_onnxruntime_at_any_batch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    net = _net()
    path = tmp_path / "net.onnx"
    torch.onnx.export(
        net,
        (torch.randn(2, 3, 16, 16),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
        dynamo=True,
        verbose=False,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in (1, 5):
        x = torch.randn(b, 3, 16, 16)
        (out,) = sess.run(None, {"image": x.numpy()})
        torch.testing.assert_close(torch.from_numpy(out), net(x), rtol=1e-4, atol=1e-4)


def test_torch_compile_matches_eager_and_temperature_change_does_not_recompile():
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 8, 3, padding=1, temperature=1.0)
    x = torch.randn(3, 4, 8, 8)
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter)
    torch.testing.assert_close(compiled(x), layer(x))
    layer.temperature.fill_(5.0)
    torch.testing.assert_close(compiled(x), layer(x))
    assert counter.frame_count == 1
    # And with the default inductor backend, forward and backward.
    torch._dynamo.reset()
    compiled = torch.compile(layer)
    y = compiled(x)
    torch.testing.assert_close(y, layer(x), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert layer.weight.grad is not None


def _bn_net() -> nn.Module:
    """_net() with BatchNorm statistics that matter, and a BN after a bias-free dynamic conv."""
    net = _net()
    net.insert(7, nn.BatchNorm2d(16))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.5, generator=gen)
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return net.eval()


def test_fold_batchnorm_and_temperature_are_exact():
    from dyconv.export.fold import prepare_for_export

    net = _bn_net()
    set_temperature(net, 7.0)
    folded = prepare_for_export(net)
    # Both BNs follow a dynamic conv (one with a bias, one without) and are gone.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert folded[6].layer.bias is not None and net[6].bias is None
    # A bias-free conv gets K equal biases: exported graphs use them as one constant.
    torch.testing.assert_close(folded[6].shared_bias, folded[6].layer.bias[2], rtol=0, atol=0)
    assert all(float(m.temperature) == 1.0 for m in folded.modules() if isinstance(m, DynamicConv2d))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(folded(x), expected, rtol=1e-5, atol=1e-5)


def _matches_in_onnxruntime(path, net: nn.Module, sizes, atol: float):
    """The ONNX file at ``path`` computes ``net`` on random 3x16x16 batches of each size; returns its session."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for b in sizes:
        x = torch.randn(b, 3, 16, 16)
        (out,) = sess.run(None, {"image": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), net(x), rtol=1e-4, atol=atol, msg=f"{path.name}/{b}")
    return sess


def test_export_model_onnx_per_sample_scan_and_fixed_batches(tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from dyconv.export import export_model

    net = _bn_net()
    example = torch.randn(2, 3, 16, 16)
    files = {}
    for batch in (None, 1, 3):
        files[batch] = tmp_path / f"net_{batch}.onnx"
        # The any-batch file from a batch-1 example and a plain string path, as a user may pass them.
        export_model(net, example[:1] if batch is None else example, str(files[batch]), "onnx", batch=batch)
    # The any-batch file: one Scan over the samples, each step the batch-1 graph.
    ops = [n.op_type for n in onnx.load(str(files[None])).graph.node]
    assert ops.count("Scan") == 1 and "If" not in ops
    assert "Scan" not in [n.op_type for n in onnx.load(str(files[1])).graph.node]
    for batch, sizes in ((None, (1, 5, 2)), (1, (1,)), (3, (3,))):
        sess = _matches_in_onnxruntime(files[batch], net, sizes, atol=1e-4)
        shape = sess.get_inputs()[0].shape
        assert shape[0] == batch if batch else not isinstance(shape[0], int)


def test_export_model_runtime_onnxruntime_blocks_the_depthwise_convs_16_divides(tmp_path):
    """runtime="onnxruntime": depthwise layers whose channels 16 divides run their computed
    kernels through onnxruntime's blocked conv (the 8-channel one keeps a standard Conv); the
    files compute what the model computes at batch 1 and 5 (any-batch) and at their fixed batch."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from onnx.inliner import inline_local_functions
    from onnx.reference import ReferenceEvaluator

    from dyconv.export import export_model
    from dyconv.export.ort_blocked import NCHWC_DOMAIN

    torch.manual_seed(0)
    net = nn.Sequential(
        DynamicConv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
        DynamicConv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),  # blocked
        DynamicConv2d(16, 32, 1), nn.ReLU(),
        DynamicConv2d(32, 32, 3, stride=2, padding=1, groups=32),  # blocked, strided
        DynamicConv2d(32, 8, 1), DynamicConv2d(8, 8, 3, padding=1, groups=8),  # 8 channels: standard
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )
    _sharpen(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()

    def nodes(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    yield from nodes(attr.g)

    for batch, sizes in ((None, (1, 5)), (1, (1,)), (3, (3,))):
        path = tmp_path / f"net_{batch}.onnx"
        info = export_model(net, torch.randn(2, 3, 16, 16), str(path), "onnx", batch=batch, runtime="onnxruntime")
        assert info["blocked_depthwise_convs"] == 2
        ops = [(n.domain, n.op_type) for n in nodes(onnx.load(str(path)).graph)]
        assert ops.count((NCHWC_DOMAIN, "Conv")) == 2 and ("", "Conv") in ops
        _blocked_values_stay_blocked(onnx.load(str(path)).graph)
        _matches_in_onnxruntime(path, net, sizes, atol=1e-5)
        # Other runtimes: the blocked ops' standard function bodies, expanded, compute the same.
        onnx.checker.check_model(onnx.load(str(path)), full_check=True)
        expanded = tmp_path / f"net_{batch}_expanded.onnx"
        onnx.save(inline_local_functions(onnx.load(str(path))), str(expanded))
        assert {n.domain for n in nodes(onnx.load(str(expanded)).graph)} <= {"", "ai.onnx"}
        _matches_in_onnxruntime(expanded, net, sizes, atol=1e-5)
        if batch == 1:  # onnx's reference runtime knows no onnxruntime op: it runs the functions
            x = torch.randn(1, 3, 16, 16)
            (out,) = ReferenceEvaluator(str(path)).run(None, {"image": x.numpy()})
            with torch.no_grad():
                torch.testing.assert_close(torch.from_numpy(out), net(x), rtol=1e-4, atol=1e-5)


def _blocked_values_stay_blocked(graph) -> None:
    """onnxruntime's blocked ops and their function bodies (identity reorders) give different
    values, so standard ops may read a blocked value only to hand it, reshaped, to a blocked
    conv: then every standard value is the same under both meanings, and a tool that folds
    constants by the functions' meaning (onnx-simplifier did, with the earlier block probe) and
    keeps the blocked nodes cannot change what onnxruntime computes."""
    from dyconv.export.ort_blocked import NCHWC_DOMAIN

    blocked = {o for n in graph.node if n.domain == NCHWC_DOMAIN and n.op_type != "ReorderOutput" for o in n.output}
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                _blocked_values_stay_blocked(attr.g)
        if node.domain == NCHWC_DOMAIN or not blocked & set(node.input):
            continue
        assert node.op_type == "Reshape", node
        readers = [n for n in graph.node if node.output[0] in n.input]
        uses = [(n.domain, n.op_type, list(n.input).index(node.output[0])) for n in readers]
        assert uses == [(NCHWC_DOMAIN, "Conv", 1)]  # the blocked conv's kernel


def test_float64_depthwise_layers_keep_the_standard_conv(tmp_path):
    """onnxruntime's blocked kernels are float32: a float64 network's file stays standard."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from dyconv.export import export_model

    net = nn.Sequential(DynamicConv2d(16, 16, 3, padding=1, groups=16, bias=False)).double().eval()
    path = tmp_path / "f64.onnx"
    info = export_model(net, torch.randn(2, 16, 8, 8, dtype=torch.float64), path, "onnx", runtime="onnxruntime")
    assert info["blocked_depthwise_convs"] == 0
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not model.functions


def test_the_default_onnx_file_is_standard_onnx_and_auto_means_any(tmp_path):
    """Without ``runtime=`` (and with the old ``runtime="auto"``) a depthwise layer that
    ``runtime="onnxruntime"`` would block keeps the standard Conv: no onnxruntime domain, no
    functions; the file equals the model."""
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from dyconv.export import export_model

    torch.manual_seed(0)
    net = _sharpen(nn.Sequential(DynamicConv2d(3, 16, 3, padding=1), DynamicConv2d(16, 16, 3, padding=1, groups=16),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())).eval()
    for runtime in (None, "auto"):
        path = tmp_path / f"{runtime}.onnx"
        info = export_model(net, torch.randn(2, 3, 16, 16), path, "onnx", batch=1,
                            **({} if runtime is None else {"runtime": runtime}))
        model = onnx.load(str(path))
        assert info.get("blocked_depthwise_convs", 0) == 0 and not model.functions
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
        onnx.checker.check_model(model, full_check=True)
        _matches_in_onnxruntime(path, net, (1,), atol=1e-5)


def test_export_runtime_is_checked_before_exporting(tmp_path):
    from dyconv.errors import ConfigError
    from dyconv.export import export_model

    with pytest.raises(ConfigError, match="runtime must be one of auto, any, onnxruntime, got 'tensorrt'"):
        export_model(_net(), torch.randn(2, 3, 16, 16), tmp_path / "a.onnx", "onnx", runtime="tensorrt")
    with pytest.raises(ConfigError, match="runtime=onnxruntime applies to format=onnx only"):
        export_model(_net(), torch.randn(2, 3, 16, 16), tmp_path / "a.pt2", "pt2", runtime="onnxruntime")
    assert not any(tmp_path.iterdir())


def test_export_model_pt2_compiles_with_aotinductor(tmp_path):
    """docs/deployment.md's AOTInductor recipe on an exported program: the compiled package
    computes what the model computes at every batch, not only the example's (a symbolic conv
    group count, for one, was fixed to the example batch by torch 2.14's AOTInductor)."""
    import shutil

    from dyconv.export import export_model

    if not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        pytest.skip("AOTInductor needs a C++ compiler")
    net = _net()
    export_model(net, torch.randn(2, 3, 16, 16), tmp_path / "net.pt2", "pt2")
    program = torch.export.load(str(tmp_path / "net.pt2"))
    package = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "net_aoti.pt2"))
    runner = torch._inductor.aoti_load_package(package)
    for b in (1, 5):
        x = torch.randn(b, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(runner(x), net(x), rtol=1e-5, atol=1e-5)


def test_export_model_pt2_any_batch(tmp_path):
    from dyconv.export import export_model

    net = _bn_net()
    export_model(net, torch.randn(2, 3, 16, 16), tmp_path / "net.pt2", "pt2")
    program = torch.export.load(str(tmp_path / "net.pt2")).module()
    for b in (1, 5):
        x = torch.randn(b, 3, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(program(x), net(x), rtol=1e-5, atol=1e-5)


def test_export_batch1_graph_per_layer_form_and_branch_constants(tmp_path):
    """Batch 1: strided depthwise convs and those on small maps become K constant-kernel convs
    (onnxruntime pre-packs them), the others one conv with the aggregated kernel; the any-batch
    file runs that graph per sample (a Scan) whose body holds its own constants. Outputs equal
    PyTorch's either way."""
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from dyconv.export import export_model

    torch.manual_seed(0)
    net = nn.Sequential(
        DynamicConv2d(3, 8, 3, padding=1),  # dense: aggregated
        DynamicConv2d(8, 8, 3, padding=1, groups=8),  # depthwise, 16x16 output: aggregated
        DynamicConv2d(8, 8, 3, stride=2, padding=1, groups=8),  # strided depthwise to 8x8: K convs
        nn.ReLU(),
        DynamicConv2d(8, 8, 3, padding=1, groups=8, bias=False),  # depthwise at 8x8: K convs
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
    _sharpen(net)
    example = torch.randn(2, 3, 16, 16)
    export_model(net, example, tmp_path / "b1.onnx", "onnx", batch=1)
    export_model(net, example, tmp_path / "any.onnx", "onnx")

    def convs(graph):
        constants = {i.name for i in graph.initializer}
        nodes = [n for n in graph.node if n.op_type == "Conv"]
        return len(nodes), sum(n.input[1] in constants for n in nodes)

    b1 = onnx.load(str(tmp_path / "b1.onnx")).graph
    assert convs(b1) == (2 + 2 * 4, 2 * 4)
    assert "Gather" not in [n.op_type for n in b1.node]  # pi is the (1, K) row itself
    (per_sample,) = [n for n in onnx.load(str(tmp_path / "any.onnx")).graph.node if n.op_type == "Scan"]
    body = next(a.g for a in per_sample.attribute if a.name == "body")
    assert convs(body) == (2 + 2 * 4, 2 * 4)  # the kernels are the body's own constants
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in body.node for p in n.metadata_props)
    from dyconv.export.exporter import _names_read

    for path in ("b1.onnx", "any.onnx"):  # no dead constants (onnxruntime warns about each at load)
        graph = onnx.load(str(tmp_path / path)).graph
        assert {i.name for i in graph.initializer} <= _names_read(graph), path
    for name, sizes in (("b1", (1,)), ("any", (1, 5))):
        sess = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        for b in sizes:
            x = torch.randn(b, 3, 16, 16)
            (out,) = sess.run(None, {"image": x.numpy()})
            with torch.no_grad():
                expected = net(x)
            assert expected.abs().max() > 0.1
            torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4, msg=f"{name}/{b}")


def test_export_model_with_weights_in_a_side_file(tmp_path, monkeypatch):
    """A network over 2 GiB keeps its weights in ``<file>.data`` (forced here for a small one):
    the rewrites (the Scan body's constants, runtime="onnxruntime"'s blocked convs) load and save
    them there, and the file matches the model."""
    pytest.importorskip("onnxruntime")
    import dyconv.export.exporter as export

    monkeypatch.setattr(export, "_onnx_external_data", lambda model: True)
    torch.manual_seed(0)
    net = nn.Sequential(DynamicConv2d(3, 16, 3, padding=1), nn.ReLU(), DynamicConv2d(16, 16, 3, padding=1, groups=16),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4096))
    _sharpen(net)
    net.eval()
    path = tmp_path / "big.onnx"
    info = export.export_model(net, torch.randn(2, 3, 16, 16), path, "onnx", runtime="onnxruntime")
    assert info["blocked_depthwise_convs"] == 1
    weights = 16 * 4096 * 4  # the Linear's: in the side file, not in the graph
    assert (tmp_path / "big.onnx.data").stat().st_size > weights > path.stat().st_size
    _matches_in_onnxruntime(path, net, (1, 5), atol=1e-5)


def test_moved_modules_warn_and_give_the_export_package_objects():
    """0.1.0's dyconv.utils.fold and dyconv.utils.ort_blocked live in dyconv.export now: the old
    import paths warn (for one minor version) and hand out the same objects; the layer module's
    export_batch is gone, with a message that names the replacement."""
    import dyconv.export.fold
    import dyconv.export.ort_blocked
    import dyconv.layers.dynamic_conv
    import dyconv.utils.fold
    import dyconv.utils.ort_blocked

    with pytest.warns(DeprecationWarning, match="import prepare_for_export from dyconv.export.fold"):
        from dyconv.utils.fold import prepare_for_export
    assert prepare_for_export is dyconv.export.fold.prepare_for_export
    with pytest.warns(DeprecationWarning, match="import NCHWC_DOMAIN from dyconv.export.ort_blocked"):
        assert dyconv.utils.ort_blocked.NCHWC_DOMAIN == dyconv.export.ort_blocked.NCHWC_DOMAIN
    with pytest.raises(AttributeError, match=r"export_model\(\.\.\., batch=B\)"):
        dyconv.layers.dynamic_conv.export_batch  # noqa: B018
