"""Image explanations: a Grad-CAM-family heatmap or a middle-stage map the known-answer controls validated (IG from
the median features, the dermatology suite's default since session 10; feature occlusion) through the whole fused
model, lesion vs context (mass vs area, the confidence check, lesion-only / context-only maps) and stability across MC
samples."""
from __future__ import annotations

import numpy as np
import streamlit as st

from core import plots
from core.errors import FusionLensError
from core.explain.gradcam import CONTROL_FIGURES, MAP_METHODS, NAMES, default_cam, describe_cam, heatmap_methods, method_cost, validated_map
from core.explain.cohort import map_measures
from dashboard import loaders
from dashboard.figures import display_map, light_overlay
from dashboard.auth import require_sign_in
from dashboard.report_ui import report_panel
from dashboard.state import headline_sent, results_page, show_error, stop_on_error

require_sign_in()  # the sign-in gate (dashboard/auth.py): nothing below renders for a signed-out user
page = results_page("Image explanations", ":material/image:")
pkg, case = page.pkg, page.case
if "image" not in pkg.modalities:
    st.info("The selected model does not use images; pick a variant with an image input in the sidebar.")
    st.stop()
if case.image is None:
    st.info("This case has no image (the model used its learned 'missing' embedding instead); upload one on the "
            "Case page to see image explanations.")
    st.stop()
pred = page.require_prediction()


#: what red means on each map of MAP_METHODS
MAP_READING = {"feature_occlusion": "Red = cells whose removal (their features replaced by the image's median) lowered the "
                                    "explained class's calibrated logit.",
               "median_ig": "Red = cells whose integrated gradients from the image's median features (plain skin) raise "
                            "the explained class's calibrated logit."}


def method_name(m: str) -> str:
    return m if method_cost(m) == "fast" else f"{m} (slow)"


c1, c2, c3 = st.columns(3)
default_method, default_layer = default_cam(pkg)   # measured per suite (HAM10000: Grad-CAM++ x early LayerCAM; dermatology: median_ig)
checked = validated_map(pkg)   # the map the known-answer controls validated for this suite (dermatology: median_ig)
ctrl = CONTROL_FIGURES.get(checked or "", {})   # its lesion-only control figures
methods = heatmap_methods(pkg)  # the CAMs, then the maps this image encoder can draw (core.explain.gradcam.MAP_METHODS)
layers = loaders.cam_layers(pkg)
if st.session_state.get("cam_method", methods[0]) not in methods:   # e.g. feature occlusion, then a dual-expert package
    del st.session_state["cam_method"]
method = c1.selectbox("Heatmap method", methods, index=methods.index(default_method), key="cam_method",
                      format_func=method_name,
                      help="CAMs marked slow run one forward pass per channel of the layer; feature occlusion (slow) "
                           "one pass of the later blocks per middle-stage cell; IG from the median features (median_ig) "
                           "one batched pass of them.")
is_map = method in MAP_METHODS   # reads its own layer: no layer choice, no TTA, no MC-dropout stability
layer = c2.selectbox("Layer", layers, index=layers.index(default_layer) if default_layer in layers else 0, key="cam_layer",
                     disabled=is_map,
                     help="The last stage is coarse and semantic; earlier stages are finer but noisier; "
                          "'last × early stage' gates the last stage's map by the early stage's LayerCAM. "
                          "The maps (feature occlusion, IG from the median features) always read the middle stage.")
target = c3.selectbox("Explain the class", pkg.labels, index=pred.label_index, key="image_target")
c4, c5, c6 = st.columns(3)
tta = c4.toggle("Test-time augmentation", key="cam_tta", disabled=is_map,
                help="Average the heatmap over flips and a rotation (CAMs only).") and not is_map
samples = c5.slider("MC samples for stability", 4, 16, 8, key="stability_samples")
opacity = c6.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity")
if is_map:
    st.caption(MAP_METHODS[method][2])
if checked and checked == default_method:
    st.caption(f"The default heatmap here is **{NAMES.get(checked, checked)}**, the map the known-answer controls (models "
               "that can only use the lesion, or only its surroundings) validated for this suite"
               + (f": on the lesion-only control its peak lies in the lesion for {ctrl['peak_in_lesion']:.0%} of "
                  f"{ctrl['n']:.0f} fresh cases (last-stage Grad-CAM {ctrl['gradcam']:.0%}, a random point {ctrl['random']:.0%})"
                  if ctrl else "") + ". No map passes the context-only control's lesion check (README, \"Known-answer controls\").")
elif checked:
    st.caption(f"Which map to trust here: the known-answer controls (models that can only use the lesion, or only its "
               f"surroundings) validated **{NAMES.get(checked, checked)}** for this suite, not the default "
               f"{describe_cam(default_method, default_layer)}, which missed the lesion the lesion-only control used"
               + (f" (peak in the lesion {ctrl['gradcam']:.0%} vs {ctrl['peak_in_lesion']:.0%} of {ctrl['n']:.0f} cases, a random "
                  f"point {ctrl['random']:.0%})" if ctrl else "")
               + f". {NAMES.get(checked, checked)} is {MAP_METHODS[checked][1].split(':')[0]} here; no map passes the "
               "context-only control's lesion check (README, \"Known-answer controls\").")

options = dict(target=pkg.labels.index(target), cam_methods=(method,), cam_layer=layer, tta=tta)
slow = method_cost(method) != "fast"
ex = loaders.explain(pkg, case, ("cam", "lesion_context"), only_cached=True, **options)
if ex is None and slow:
    st.caption(f"{method}: {method_cost(method)}.")
    if not st.button(f"Compute {method}", key="cam_compute", type="primary"):
        st.stop()
progress = st.progress(0.0, text="Heatmap and lesion / context check…")
try:
    with stop_on_error():
        ex = ex if ex is not None else loaders.explain(pkg, case, ("cam", "lesion_context"), **options)
finally:
    progress.empty()

cam = ex.cams[method]
lc = ex.lesion_context or {}
left, right = st.columns(2)
with left:
    st.plotly_chart(light_overlay(plots.cam_overlay(case.image, cam, opacity, lc.get("mask"), lc.get("ring"),
                                                    f"{describe_cam(method, layer)} · P({target})")), key="cam_chart")
    headline_sent()
    st.caption(f"Green outline: lesion mask ({lc.get('mask_source', 'none')}); dotted white: the context ring around it. "
               + (MAP_READING.get(method, "") if is_map else "Red = regions that raised the explained class's calibrated logit."))
    if st.checkbox("Prepare a PNG of this overlay", key="cam_png"):
        st.download_button("Download PNG", plots.cam_overlay_png(case.image, cam, lc.get("mask"), opacity,
                                                                 f"{describe_cam(method, layer)} · P({target})"),
                           file_name=f"{case.case_id or 'case'}_{method}.png", mime="image/png", key="cam_png_download")
with right:
    shares = (lc.get("shares") or {}).get(method)
    if shares:
        st.plotly_chart(plots.region_shares(shares), key="shares_chart")
        if np.isfinite(shares.get("lesion", np.nan)):
            fm = map_measures(cam, lc["mask"], lc.get("ring"))   # the cohort table's measures (core/explain/cohort.py)
            yes = lambda hit: "yes" if hit else "no"  # noqa: E731
            st.caption(f"The lesion holds {shares['lesion']:.0%} of the heatmap's mass on {shares['lesion_area']:.0%} of "
                       f"the image: relevance mass ratio {fm['lesion_ratio']:.1f} (1.0 = a uniform map); the context "
                       f"ring {shares['context']:.0%} on {shares['context_area']:.0%} (ratio {fm['context_ratio']:.1f}). "
                       f"Peak in the lesion: {yes(fm['lesion_hit'])} (a random point: {fm['lesion_hit_chance']:.0%}); "
                       f"in the ring: {yes(fm['context_hit'])} ({fm['context_hit_chance']:.0%}). Energy in the lesion's "
                       f"box: {fm['lesion_energy']:.0%} (uniform map: {fm['lesion_energy_chance']:.0%}).")
        else:
            st.caption("The heatmap is all zero: it puts no mass anywhere, so there are no shares to report.")

if ex.lesion_stream_cam is not None:
    st.subheader("Dual expert: the lesion stream and the global stream")
    gate = float(np.asarray(pred.diagnostics.get("image_lesion_gate", np.nan)))
    a, b, c = st.columns([1, 2, 2])
    a.metric("Lesion gate w_l", "n/a" if not np.isfinite(gate) else f"{gate:.2f}",
             help="The model's own weight on the lesion stream for this case; 1 - w_l goes to the whole image.")
    a.caption("Near 1: the model decides from the lesion crop. Near 0: it leans on the whole image, the context.")
    with b:
        fig = light_overlay(plots.cam_overlay(case.image, ex.lesion_stream_cam, opacity, lc.get("mask"), None,
                                              "lesion stream"))
        st.plotly_chart(fig, key="lesion_stream_chart")
    with c:
        st.plotly_chart(light_overlay(plots.cam_overlay(case.image, cam, opacity, lc.get("mask"), None, "global stream")),
                        key="global_stream_chart")
    st.caption("Each stream's Grad-CAM for the same class: the lesion stream sees only the crop around the lesion "
               "(zero outside it), the global stream the whole image; the other stream is held fixed.")

if lc:
    st.subheader("Lesion or context?")
    a, b = st.columns(2)
    with a:
        conf = lc["confidence"]
        st.plotly_chart(plots.confidence_check(conf, target), key="confidence_chart")
        full = conf["full"]
        st.caption(f"P({target}) with only the lesion sharp: {conf['lesion_only']:.1%} ({conf['lesion_only'] - full:+.1%} vs "
                   f"the full image); only the context: {conf['context_only']:.1%} ({conf['context_only'] - full:+.1%}); "
                   f"neither: {conf['neither']:.1%}. The rest of the image is blurred, not blacked out.")
    with b:
        st.plotly_chart(plots.heatmap_pair(display_map(lc["lesion_only_map"]), display_map(lc["context_only_map"])),
                        key="split_chart")
        st.caption("The heatmap kept only inside the lesion (left) and only in the context ring (right), same colour scale.")

st.subheader("Stability across MC-dropout samples")
if is_map:
    st.caption(f"{NAMES.get(method, method)} reads the model without MC dropout: pick a CAM to see how a heatmap changes "
               "across dropout samples.")
    report_panel(pkg, case, "image_explanations_report")
    st.stop()
if slow:
    st.checkbox(f"Compute the stability of {method} too (one {method} run per sample: slow)", key="slow_stability")
stab = None
if not slow or st.session_state.get("slow_stability"):  # the heatmap above is drawn before this wait
    try:
        with st.spinner(f"Stability across {samples} MC-dropout samples…"):
            stab = loaders.explain(pkg, case, ("stability",), stability_samples=samples, **options)
    except FusionLensError as e:
        show_error(e)
s = stab.stability if stab is not None else None
if s:
    corr = s["mean_pairwise_correlation"]
    st.metric("Mean pairwise correlation", "n/a" if not np.isfinite(corr) else f"{corr:.2f}",
              help="1 = the heatmap is the same under every MC-dropout sample of the head.")
    st.plotly_chart(plots.stability_figure({**s, "mean": display_map(s["mean"]), "std": display_map(s["std"])}),
                    key="stability_chart")
    st.caption(f"{s['samples']} samples. Bright areas on the right change between samples: read them with care.")

report_panel(pkg, case, "image_explanations_report")
