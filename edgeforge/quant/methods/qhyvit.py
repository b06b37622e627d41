"""`qhyvit`: Q-HyViT (arXiv 2303.12557), post-training quantization for hybrid conv+attention ViTs.

What runs (the engine's `refine` hook, after percentile calibration):
0. the start: percentile, entropy or mse ranges (from the same histograms), whichever gives the
   model output closest to FP32 on the target's integer kernels;
1. bridge blocks found in the graph (`quant.bridge`: conv -> attention, attention downsampling);
2. per-layer granularity and scheme where the target allows it: weights per-channel (symmetric,
   int8 container) where the target takes per-channel weights, else per-tensor; activations
   asymmetric or symmetric per tensor, chosen by the objective below (symmetric only on
   symmetric-only targets; non-negative tensors stay asymmetric: zero-point 0, every level
   used). Activations stay per-tensor: QLinearConv / QGemm (ONNX Runtime, OpenVINO, TensorRT)
   take one input scale and the int32 bias is s_in * s_w, so per-channel activations have no
   deployable form here; zero-points are computed from ranges that contain 0, so they never
   overflow the integer range (the problem Q-HyViT fixes for per-channel activations);
3. Hessian-guided reconstruction (`quant.reconstruction`): a grid search over weight and
   activation scales minimising E[dO^T diag((dL/dO)^2) dO], several rounds; the searched
   weights and/or activations are kept where the model output says they help;
4. the paper's L itself: activation ranges searched against the whole model's output
   (`quant.output_search`, KL to FP32 on the calibration samples, bounded by a time budget),
   kept if the integer kernels agree (benchmarks/quant_accuracy.py has the figures).

What differs from the paper, said in quant.json's `method_info`: O is each layer's own output,
also inside bridge blocks (the paper uses the bridge block's output for its layers; here the
bridge layers are listed and use the same layer-output objective); (dL/dO)^2 comes from the
cross-entropy against the FP32 argmax (the KL of the paper has a zero gradient at the FP
point); without a torch model (imported ONNX) the objective is plain output MSE.
The torch simulation takes the searched scales from the engine (`apply_torch`), so the sim
agreement check compares the same quantizers placed and computed independently.
"""

from __future__ import annotations

import time

import numpy as np

from edgeforge.quant.methods import Method, register_method


@register_method
class QHyViT(Method):
    name = "qhyvit"
    summary = "Q-HyViT: bridge blocks, per-layer scheme, Hessian-guided scale search"
    observer = "percentile"
    rounds = 3
    alphas = None  # default: reconstruction.ALPHAS (101 values in [0.01, 1.2])
    budget = 1 << 17  # floats per captured layer (rows x K): sets the search's cost
    output_search_rounds = 1  # passes of quant.output_search after the layer-wise search (0: off)
    output_search_budget_s = 300.0  # the output search stops starting new quantizers after this
    start_observers = ("entropy", "mse")  # other calibrations the start is chosen from (with `observer`)

    def weight_params(self, w, bits, axis):
        from edgeforge.quant.observers import weight_params

        return weight_params(w, bits, "mse" if bits < 8 else "minmax", axis)

    def apply_torch(self, sim_acts: dict, sim_weights: dict, scheme, params) -> None:
        """The simulation takes the searched quantizers: activations by their calibrated quantizer
        (the simulation's percentile calibration gives the engine's scales and zero-points, by
        design), weights by module path."""
        if params is None:
            from edgeforge.errors import NotAvailable

            raise NotAvailable("qhyvit's scale search runs on the ONNX engine (edgeforge quantize / quantize_onnx); "
                               "the torch simulation takes its results from there")
        from edgeforge.quant.overflow import layer_for, make_safe, max_activation_code
        from edgeforge.quant.quantizers import QParams

        for q in sim_acts.values():
            if q.qparams is not None and q.qparams.kind == "uniform" and not q.qparams.per_channel:
                new = params["acts"].get(_act_key(q.qparams))
                if new is not None:
                    q.qparams = new
        for path, qw in sim_weights.items():
            new = params["weights"].get(path)
            if new is None:
                continue
            w = qw.inner.weight.detach().cpu().numpy()
            scale = np.asarray(new.scale, np.float32)
            if scale.ndim and scale.shape[0] != w.shape[0]:
                continue  # not the same layer after all (a layout the engine saw differently)
            qp = QParams(scale, np.zeros_like(np.asarray(new.zero_point)), new.bits, True, True,
                         0 if scale.ndim else None, new.observer, extra=dict(new.extra))
            if scheme.overflow_fix == "pairs":  # as the simulation does for its own weights
                layer, out_axis = layer_for("conv" if w.ndim >= 3 else "linear", w.shape)
                qp = make_safe(w, qp, layer, max_activation_code(scheme.act_bits, scheme.act_signed), out_axis)
            qw.set_qparams(qp)

    def refine(self, ctx) -> None:
        import torch

        from edgeforge.errors import BadInput
        from edgeforge.quant import reconstruction as rc
        from edgeforge.quant.bridge import find_bridges
        from edgeforge.quant.calibrate import progress
        from edgeforge.quant.overflow import make_safe, max_activation_code
        from edgeforge.quant.placement import GraphIndex, module_path
        from edgeforge.quant.quantizers import fit_inside
        from edgeforge.quant.scheme import convert_for_target

        t0 = time.perf_counter()
        scheme = ctx.scheme
        alphas = rc.ALPHAS if self.alphas is None else np.asarray(self.alphas)
        info = ctx.info
        bridges = find_bridges(ctx.model)
        in_bridge = {n: b.block for b in bridges for n in b.layers}
        info["bridge_blocks"] = [b.to_json() for b in bridges]
        sym_only = bool(scheme.constraints.get("symmetric_only"))
        families = ["symmetric"] if scheme.act_symmetric else ["asymmetric", "symmetric"]
        info["scheme_choice"] = {
            "activations": ("symmetric only (" + ("the target is symmetric-only" if sym_only else
                                                  "symmetric activations requested") + ")")
            if scheme.act_symmetric else "asymmetric or symmetric per tensor, by the objective",
            "activation_granularity": "per-tensor: QLinearConv/QGemm take one input scale (the int32 bias is "
                                      "s_in * s_w), so per-channel activations are not deployable",
            "weights": ("per-channel" if scheme.weight_per_channel else "per-tensor (the target takes no "
                        "per-channel weights)") + " symmetric int8 container",
            "activation_dtype": "int8" if scheme.act_signed else "uint8"}

        idx = GraphIndex(ctx.model)
        nodes = {n.name: n for n in ctx.model.graph.node}
        # The starting ranges: the calibrated observer whose model output (the target's integer
        # kernels, calibration samples) is closest to FP32. Which one wins depends on the model
        # (percentile on the ViT fixtures, entropy on ImageNet MobileNetV2).
        calibrated = ctx.act_q
        starts = {self.observer: calibrated}
        for name in self.start_observers:
            alt = _calibrated_as(ctx, idx, name)
            if alt is not None and name not in starts:
                starts[name] = alt
        if len(starts) > 1:
            start_name, start_losses = model_output_choice(ctx, {k: (v, ctx.weight_q) for k, v in starts.items()})
        else:
            start_name, start_losses = self.observer, None
        start = starts[start_name]
        info["start"] = {"observer": start_name, "losses": start_losses,
                         "loss": _loss_name(ctx) + " on the calibration samples, ONNX Runtime integer kernels"}
        cout = {}
        for ws in ctx.plan.weights:
            w = idx.init_array(ws.initializer)
            n = nodes[ws.node]
            trans_b = any(a.name == "transB" and a.i for a in n.attribute)
            cout[ws.node] = w.shape[0] if n.op_type == "Conv" or (n.op_type == "Gemm" and trans_b) else w.shape[-1]

        # (dL/dO)^2 from the torch model
        g2, weighting = None, None
        t_grad = time.perf_counter()
        if ctx.torch_model is None:
            weighting = "unweighted output MSE: no torch model (imported ONNX), so no (dL/dO)^2"
        else:
            try:
                model = ctx.torch_model()
                torch.set_grad_enabled(True)
                g2, missing = rc.output_grads(model, ctx.x, cout)
                weighting = {"loss": "cross-entropy against the FP32 model's argmax", "layers_weighted": len(g2),
                             "layers_unweighted": {module_path(k): v for k, v in list(missing.items())[:20]},
                             "layers_unweighted_count": len(missing)}
            except Exception as e:  # noqa: BLE001 - the search still runs, unweighted, and says why
                weighting = f"unweighted output MSE: the torch model's gradients failed ({type(e).__name__}: {e})"
                g2 = None
        info["weighting"] = weighting
        t_grad = time.perf_counter() - t_grad

        t_cap = time.perf_counter()
        with progress("qhyvit: capturing layer inputs", len(ctx.act_q), ctx.console, ctx.show_progress) as adv:
            layers, acts, skipped = rc.build(ctx.model, ctx.plan, ctx.x, set(ctx.act_q), g2, self.budget,
                                             advance=adv)
        t_cap = time.perf_counter() - t_cap
        for t, ad in acts.items():
            site = ctx.plan.acts.get(t)
            ad.clip = site.clip if site is not None else None
        for ld in layers:
            ld.bridge = in_bridge.get(ld.node)

        act_q, weight_q = dict(start), dict(ctx.weight_q)
        for k, qp in list(weight_q.items()):
            if qp.codes is not None:  # explicit codes (pairs fix) are re-derived after the search
                weight_q[k] = type(qp)(qp.scale, qp.zero_point, qp.bits, qp.symmetric, qp.signed, qp.axis,
                                       qp.observer, qp.kind, dict(qp.extra))
        before = rc.total_objective(layers, acts, act_q, weight_q)
        wbits = scheme.stored_weight_bits
        w_alpha: dict[str, np.ndarray] = {}
        a_choice: dict[str, dict] = {}
        searched_w = []
        seen_w = set()
        for ld in layers:
            if ld.weight and ld.weight not in seen_w:
                seen_w.add(ld.weight)
                searched_w.append(ld)
        act_list = [t for t, ad in acts.items() if t in act_q and act_q[t].kind == "uniform"
                    and (ad.consumers or ad.values is not None)]
        history = []
        t_search = time.perf_counter()
        with torch.no_grad(), progress(f"qhyvit: scale search ({self.rounds} rounds)",
                                       self.rounds * (len(searched_w) + len(act_list)),
                                       ctx.console, ctx.show_progress) as advance:
            for r in range(self.rounds):
                for ld in searched_w:
                    qp, alpha = rc.search_weight(ld, [act_q[a] for a in ld.acts], weight_q[ld.weight], wbits, alphas)
                    weight_q[ld.weight] = qp
                    prev = w_alpha.get(ld.weight)
                    w_alpha[ld.weight] = np.where(np.isnan(alpha), prev if prev is not None else np.nan, alpha)
                    advance()
                for t in act_list:
                    ad = acts[t]
                    fams = [f for f in families if not (f == "symmetric" and ad.lo >= 0 and "asymmetric" in families)]
                    def score(qp, t=t, ad=ad):
                        e = 0.0
                        if ad.values is not None:
                            e += rc.hist_mse(ad, qp)
                        for li in ad.consumers:
                            ld = layers[li]
                            aq = [qp if a2 == t else act_q[a2] for a2 in ld.acts]
                            e += float(rc.layer_error(ld, aq, weight_q.get(ld.weight) if ld.weight else None))
                        return e

                    best, best_meta, _ = rc.search_act(ad, act_q[t], scheme.act_bits, fams, scheme.act_signed,
                                                       score, alphas)
                    act_q[t] = best
                    if best_meta[0] != "current":
                        a_choice[t] = {"scheme": best_meta[0], "alpha": round(best_meta[1], 4)}
                    advance()
                history.append(rc.total_objective(layers, acts, act_q, weight_q))
        t_search = time.perf_counter() - t_search
        after = history[-1] if history else before

        # deployable forms: the target's container, the Clip it follows, the 16-bit pair fix
        for t, qp in act_q.items():
            if qp is start.get(t):
                continue
            try:
                qp = convert_for_target(qp, scheme, f"activation {t}")
            except BadInput:
                qp = start[t]  # a candidate the target cannot run: keep the calibrated one
            site = ctx.plan.acts.get(t)
            act_q[t] = fit_inside(qp, *site.clip) if site is not None and site.clip else qp
        if scheme.overflow_fix == "pairs":
            from edgeforge.quant.engine import kernel_layer

            for ws in ctx.plan.weights:
                layer = kernel_layer(nodes[ws.node], idx.init_array(ws.initializer))
                if layer is not None:
                    weight_q[ws.initializer] = make_safe(idx.init_array(ws.initializer), weight_q[ws.initializer],
                                                         layer, max_activation_code(scheme.act_bits,
                                                                                    scheme.act_signed), ws.axis)
        # The search lowers each layer's objective; the paper's L is the model's output loss. Keep
        # the searched weights and/or activations only where the whole model's output on the
        # calibration samples (the target's integer kernels) is closer to FP32 than with the
        # calibrated ones: a layer-wise search can overfit its few captured rows.
        choice, losses = model_output_choice(ctx, {"calibrated": (start, ctx.weight_q),
                                                   "weights searched": (start, weight_q),
                                                   "activations searched": (act_q, ctx.weight_q),
                                                   "both searched": (act_q, weight_q)})
        info["model_output_check"] = {"loss": _loss_name(ctx) + " of the model outputs on the "
                                              "calibration samples, ONNX Runtime integer kernels",
                                      "candidates": losses, "kept": choice}
        act_q, weight_q = {"calibrated": (start, ctx.weight_q), "weights searched": (start, weight_q),
                           "activations searched": (act_q, ctx.weight_q), "both searched": (act_q, weight_q)}[choice]
        # The paper's L itself: activation ranges searched against the model's output, from the
        # kept candidate; kept only if the target's integer kernels agree it is closer to FP32.
        if self.output_search_rounds:
            from edgeforge.quant import output_search

            with progress("qhyvit: activation ranges by the model's output", len(act_q), ctx.console,
                          ctx.show_progress) as adv:
                searched, os_info = output_search.search(ctx.model, ctx.plan, act_q, weight_q, ctx.x, scheme,
                                                         rounds=self.output_search_rounds, advance=adv,
                                                         budget_s=self.output_search_budget_s,
                                                         bias_shift=ctx.bias_shifts(weight_q) if ctx.bias_shifts
                                                         else None, output_kind=ctx.output_kind,
                                                         fp32_output=ctx.fp32_output)
            kept, os_losses = model_output_choice(ctx, {"without": (act_q, weight_q), "with": (searched, weight_q)})
            os_info["kernel_check"] = {"losses": os_losses, "kept": kept}
            info["output_search"] = os_info
            if kept == "with":
                act_q = searched
        # for the torch simulation (apply_torch): searched activations keyed by their calibrated
        # quantizer (two tensors with the same calibrated one but different results: left out),
        # searched weights by module path
        sim_acts: dict = {}
        for t, qp in act_q.items():
            cal = calibrated.get(t)  # the simulation calibrates with `observer`: its quantizers match these
            if cal is None or qp is cal or cal.per_channel or cal.kind != "uniform":
                continue
            k = _act_key(cal)
            sim_acts[k] = None if k in sim_acts and sim_acts[k] is not qp else qp
        sim_weights = {module_path(ws.node): weight_q[ws.initializer] for ws in ctx.plan.weights
                       if weight_q[ws.initializer] is not ctx.weight_q.get(ws.initializer)}
        info["_sim_params"] = {"acts": {k: v for k, v in sim_acts.items() if v is not None}, "weights": sim_weights}
        ctx.act_q, ctx.weight_q = act_q, weight_q

        per_layer = {}
        for ld in layers:
            row = {"op": ld.op, "bridge_block": ld.bridge,
                   "objective": "bridge layer: own output (see notes)" if ld.bridge else "layer output"}
            if ld.weight:
                qp = weight_q[ld.weight]
                al = w_alpha.get(ld.weight)
                row["weight"] = {"granularity": "per-channel" if qp.per_channel else "per-tensor",
                                 "scheme": "symmetric"}
                if al is not None:
                    kept = np.isnan(al)
                    row["weight"]["scale_multiplier"] = None if kept.all() else {
                        "mean": round(float(np.nanmean(al)), 4), "min": round(float(np.nanmin(al)), 4),
                        "max": round(float(np.nanmax(al)), 4)}
                    row["weight"]["channels_searched_scale"] = int((~kept).sum())
                    row["weight"]["channels_kept_calibrated_scale"] = int(kept.sum())
            a = ld.acts[0]
            aq = act_q[a]
            row["input"] = {"granularity": "per-tensor",
                            "scheme": "symmetric" if aq.symmetric else "asymmetric", "dtype": aq.dtype,
                            **({"scale_multiplier": a_choice[a]["alpha"]} if a in a_choice else
                               {"scale": "kept (percentile calibration)"})}
            per_layer[module_path(ld.node) + f" ({ld.node.rsplit('/', 1)[-1]})"] = row
        info.update({
            "objective": "E[dO^T diag((dL/dO)^2) dO], dO the layer's output change, (dL/dO)^2 per sample and "
                         "output channel; activations not read by a searched layer: their own MSE",
            "candidates": {"alpha": [float(alphas[0]), float(alphas[-1]), len(alphas)],
                           "weight_scale": "alpha * max|w_c| / (2^(k-1) - 1), per channel",
                           "order": "coarse to fine on the grid: every 5th alpha, then the 8 neighbours of the best "
                                    "(per channel for weights)",
                           "activation_range": "alpha * [min, max] of the FP32 tensor (asymmetric) or "
                                               "alpha * max|x| (symmetric); the current quantizer is always a candidate"},
            "rounds": self.rounds,
            "calibration_samples": int(len(ctx.x)),
            "loss_before": before, "loss_after": after,
            "loss_by_round": history,
            "layers_searched": len(layers),
            "layers_not_searched": {module_path(k): v for k, v in skipped.items()},
            "activations_changed": len(a_choice),
            "activation_schemes_chosen": {s: sum(1 for c in a_choice.values() if c["scheme"] == s)
                                          for s in ("asymmetric", "symmetric")},
            "per_layer": per_layer,
            "notes": ["bridge-block layers are reconstructed against their own output, not the bridge block's "
                      "output as in the paper",
                      "the torch simulation takes these scales (activations matched by their calibrated "
                      "quantizer, weights by module path) and is compared with ONNX Runtime as for every method"],
            "time_s": {"gradients": round(t_grad, 2), "capture": round(t_cap, 2), "search": round(t_search, 2),
                       "total": round(time.perf_counter() - t0, 2)}})


def model_output_choice(ctx, candidates: dict[str, tuple[dict, dict]]) -> tuple[str, dict]:
    """The candidate (act_q, weight_q) whose QDQ model's outputs on the calibration samples are
    closest to FP32: KL of the softmaxed outputs for logits, relative squared error for
    embeddings (ctx.output_kind)."""
    from edgeforge.quant.calibrate import run_outputs
    from edgeforge.quant.output_search import output_loss
    from edgeforge.quant.qdq import build_qdq

    out = ctx.model.graph.output[0].name
    if ctx.fp32_output is None:
        ctx.fp32_output = run_outputs(ctx.model, ctx.x, [out], optimize="all")[out]
    ref = ctx.fp32_output
    losses = {}
    for name, (aq, wq) in candidates.items():
        shift = ctx.bias_shifts(wq) if ctx.bias_shifts else None  # as the engine will write it
        q = run_outputs(build_qdq(ctx.model, ctx.plan, aq, wq, bias_shift=shift), ctx.x, [out], optimize="all")[out]
        losses[name] = output_loss(ref, q, ctx.output_kind)
    # ties (e.g. nothing changed) keep the earlier, simpler candidate
    best = min(losses, key=lambda k: (losses[k], list(candidates).index(k)))
    return best, {k: round(v, 8) for k, v in losses.items()}


def _loss_name(ctx) -> str:
    return ("relative squared error of the embedding" if ctx.output_kind == "embedding"
            else "KL(softmax FP32 || softmax INT8)")


def _calibrated_as(ctx, idx, observer: str) -> dict | None:
    """ctx's activation quantizers as `observer` would calibrate them, from the same histograms
    (None when the calibration kept no histograms, e.g. a min/max observer)."""
    import copy

    from edgeforge.errors import BadInput
    from edgeforge.quant.observers import observer_for
    from edgeforge.quant.quantizers import fit_inside
    from edgeforge.quant.scheme import convert_for_target

    scheme = ctx.scheme
    out = {}
    for t, qp in ctx.act_q.items():
        ob = ctx.observers.get(t)
        if ob is None or qp.kind != "uniform" or qp.per_channel:
            out[t] = qp  # fixed by a rewrite or not observed here: kept as calibrated
            continue
        alt = copy.copy(ob)
        alt.method = observer_for(observer, idx.producer[t].op_type if t in idx.producer else None)
        if alt.needs_hist and ob.hist is None:
            return None
        try:
            new = convert_for_target(alt.params(scheme.act_bits, scheme.act_symmetric, scheme.act_signed), scheme,
                                     f"activation {t}")
        except BadInput:
            return None
        clip = ctx.plan.acts[t].clip if t in ctx.plan.acts else None
        out[t] = fit_inside(new, *clip) if clip else new
    return out


def _act_key(qp) -> tuple:
    """A per-tensor quantizer's identity: float32 scale bits, zero-point, container."""
    return (np.float32(np.asarray(qp.scale).reshape(())).tobytes(), int(np.asarray(qp.zero_point).reshape(())),
            bool(qp.signed), int(qp.bits))
