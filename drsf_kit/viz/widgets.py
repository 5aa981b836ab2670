"""Interactive widgets for the notebooks: each function returns an ipywidgets object.

The widgets only wire controls to package functions (``viz.dashboard`` computes tables, charts, feature
colours and prediction drawings). Each returned widget exposes its controls by name in
``.controls`` and its current state as plain attributes (``table_df``, ``figure_png``, ...), so tests
drive it headless: set a control's ``value``, read the state. Images are PNG bytes in
``ipywidgets.Image`` widgets.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import ipywidgets as widgets
import numpy as np

from drsf_kit.analysis.explore import kit_twin_functions
from drsf_kit.data.classes import DOMAIN_SHORT, SOURCE_DOMAIN
from drsf_kit.errors import ConfigError, DataError
from drsf_kit.evaluation.results import HEADLINE_METRIC
from drsf_kit.viz import dashboard, images

DEFAULT_METRICS = HEADLINE_METRIC  # the headline metric per task, defined in evaluation/results.py


def css_classes(root: widgets.Widget, name: str, parts: Mapping[str, widgets.Widget]) -> None:
    """Give ``root`` the CSS class ``drsf-<name>`` and each part ``drsf-<key>`` (underscores as dashes):
    stable handles for page styles and browser tests (scope them: ``.drsf-mdsf-explorer .drsf-lam``)."""
    root.add_class(f"drsf-{name}")
    for key, part in parts.items():
        part.add_class(f"drsf-{key.replace('_', '-')}")


# ------------------------------------------------------------------------------------ ablation dashboard
class AblationDashboard(widgets.VBox):
    """Results of any set of runs: choose task, metric, protocol, variants and domains; see the table
    (mean ± std over seeds) and the bar chart with the seed spread.

    Controls (``.controls``): ``task``, ``metric``, ``protocol``, ``variants``, ``domains``, ``dfdr``,
    ``mdsf``. State: ``rows`` (all tidy rows), ``table_df`` (``evaluation.tables.domain_table``:
    fractions, caption in ``attrs``; None for an empty selection), ``shown_df`` (the percent strings
    displayed), ``summary_df`` (long: variant, domain, mean, std, n_seeds), ``table_markdown``,
    ``figure_png``. The DFDR/MDSF checkboxes select the variants carrying exactly those blocks (both:
    drsf; DFDR only: dfdr; MDSF only: mdsf; neither: naive_synth and source_only); until one is
    clicked, every variant is shown.
    """

    def __init__(self, rows, task: str | None = None, metric: str | None = None):
        self.rows = dashboard.load_rows(rows)
        opts = dashboard.available_options(self.rows)
        if not opts["tasks"]:
            raise ConfigError("no overall result rows to show (need rows with task, variant, seed, domain, metric, value)")
        task = task or opts["tasks"][0]
        if task not in opts["tasks"]:
            raise ConfigError(f"task {task!r} has no result rows; tasks present: {', '.join(opts['tasks'])}")
        self._busy = False
        layout = widgets.Layout(width="auto")
        self.controls = {
            "task": widgets.Dropdown(options=opts["tasks"], value=task, description="task"),
            "metric": widgets.Dropdown(options=[], description="metric"),
            "protocol": widgets.Dropdown(options=[], description="protocol"),
            "variants": widgets.SelectMultiple(options=[], description="variants", rows=5, layout=layout),
            "domains": widgets.SelectMultiple(options=[], description="domains", rows=5, layout=layout),
            "dfdr": widgets.Checkbox(value=False, description="DFDR", indent=False),
            "mdsf": widgets.Checkbox(value=False, description="MDSF", indent=False),
        }
        self.table_html = widgets.HTML()
        # flex-start: a column box stretches its children, which blew the chart up past its drawn size
        self.chart = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start", max_width="100%"))
        self.table_df = self.shown_df = self.summary_df = self.figure = None
        self.table_markdown = ""
        self.figure_png = b""
        self._set_options(task, metric)
        self.controls["task"].observe(self._on_task, names="value")
        self.controls["metric"].observe(self._on_metric, names="value")
        for name in ("protocol", "variants", "domains"):
            self.controls[name].observe(self._on_change, names="value")
        for name in ("dfdr", "mdsf"):
            self.controls[name].observe(self._on_blocks, names="value")
        c = self.controls
        row1 = widgets.HBox([c["task"], c["metric"], c["protocol"]])
        row2 = widgets.HBox([c["variants"], c["domains"], widgets.VBox([widgets.HTML("<b>blocks</b>"), c["dfdr"], c["mdsf"]])])
        super().__init__([row1, row2, self.table_html, self.chart])
        css_classes(self, "ablation-dashboard", {**self.controls, "table-html": self.table_html, "chart": self.chart})
        self.refresh()

    def _set_options(self, task: str, metric: str | None = None, keep_selection: bool = False) -> None:
        """Fill the metric, protocol, variant and domain choices for ``task`` (and ``metric``)."""
        c = self.controls
        self._busy = True
        try:
            metrics = dashboard.available_options(self.rows, task)["metrics"]
            metric = metric or c["metric"].value
            if metric not in metrics:
                default = DEFAULT_METRICS.get(task)
                metric = default if default in metrics else metrics[0]
            c["metric"].options = metrics
            c["metric"].value = metric
            opts = dashboard.available_options(self.rows, task, metric)
            previous = {k: tuple(c[k].value) for k in ("variants", "domains")}
            protocol = c["protocol"].value
            c["protocol"].options = opts["protocols"]
            c["protocol"].value = protocol if protocol in opts["protocols"] else opts["protocols"][0]
            for key in ("variants", "domains"):
                kept = tuple(v for v in previous[key] if v in opts[key]) if keep_selection else ()
                c[key].options = opts[key]
                c[key].value = kept or tuple(opts[key])
        finally:
            self._busy = False

    def _on_task(self, change) -> None:
        self._set_options(change["new"])
        self.refresh()

    def _on_metric(self, change) -> None:
        if not self._busy:
            self._set_options(self.controls["task"].value, change["new"], keep_selection=True)
            self.refresh()

    def _on_change(self, change) -> None:
        if not self._busy:
            if change["owner"] is self.controls["variants"]:
                self._clear_blocks()  # a hand-picked set of variants is no longer "the DFDR ones"
            self.refresh()

    def _clear_blocks(self) -> None:
        self._busy = True
        try:
            self.controls["dfdr"].value = self.controls["mdsf"].value = False
        finally:
            self._busy = False

    def _on_blocks(self, change) -> None:
        if self._busy:
            return
        chosen = dashboard.variants_for_blocks(
            self.controls["dfdr"].value, self.controls["mdsf"].value, self.controls["variants"].options
        )
        self._busy = True
        try:
            self.controls["variants"].value = tuple(chosen)
        finally:
            self._busy = False
        self.refresh()

    def refresh(self) -> None:
        """Recompute the table and the chart from the controls' values."""
        c = self.controls
        task, metric = c["task"].value, c["metric"].value
        try:
            self.table_df = dashboard.ablation_table(
                self.rows, task, metric, c["variants"].value, c["domains"].value, c["protocol"].value
            )
            caption = dashboard.table_caption(self.table_df, task, metric)
        except (ConfigError, DataError) as exc:  # e.g. one variant's seed scored by two runs
            self.table_df, caption = None, f"{task}: {metric}: cannot tabulate this selection: {exc}"
        self.shown_df = dashboard.display_table(self.table_df)
        self.summary_df = dashboard.long_summary(self.table_df)
        self.table_markdown = dashboard.table_markdown(self.table_df)
        self.table_html.value = dashboard.table_html(self.shown_df, caption)
        self.figure = dashboard.seed_spread_figure(self.summary_df, metric, title=f"{task}: {metric}")
        self.figure_png = images.figure_png(self.figure)
        self.chart.value = self.figure_png


def ablation_dashboard(run_dirs_or_df, task: str | None = None, metric: str | None = None) -> AblationDashboard:
    """The ablation dashboard over tidy result rows: a DataFrame, a run folder, a folder of runs, or a
    list of them (every ``results.jsonl`` below is read)."""
    return AblationDashboard(run_dirs_or_df, task=task, metric=metric)


# ---------------------------------------------------------------------------------------------- explorers
def _normalise_scenes(scenes) -> dict[str, dict]:
    """``{scene_id: {domain: image}}`` from that mapping or from a list of ``{domain: image}`` mappings."""
    if isinstance(scenes, Mapping):
        out = {str(k): dict(v) for k, v in scenes.items()}
    else:
        out = {str(i): dict(v) for i, v in enumerate(scenes)}
    if not out:
        raise ConfigError("no scenes given: expected {scene_id: {domain: image tensor [3,H,W]}}")
    for scene_id, twins in out.items():
        if not twins:
            raise ConfigError(f"scene {scene_id!r} has no images")
    return out


def _numbered_domain_names(n: int) -> list[str]:
    """Labels for discriminator outputs whose names nobody gave: ``domain 0..n-1``, never a guessed order.

    The names belong to the model (``model.domain_names``, set by ``build_model`` from the run's config);
    guessing them from a constant would silently swap pseudo-domains when a run lists them differently.
    """
    return [f"domain {i}" for i in range(n)]


def fusion_domains(twins: Mapping[str, object], source_domain: str = SOURCE_DOMAIN) -> list[str]:
    """The pseudo-domains of one scene whose twins MDSF may fuse: every domain but the source's.

    MDSF fuses two twins of one source image from two different pseudo-domains, never the source image
    with a twin; a scene needs at least two of them.
    """
    return [d for d in twins if d != source_domain]


class MdsfExplorer(widgets.VBox):
    """MDSF's fusion, live, on the pair it fuses in training: two twins of one source image from two
    different pseudo-domains (never the source image itself).

    Controls (``.controls``): ``scene``, ``domain_a`` and ``domain_b`` (two different pseudo-domains of
    the scene; the source domain is not offered), ``lam``. The model must implement
    ``predict_mixed(image_a, image_b, lam) -> {"features", "domain_probs", "prediction"}``; what lambda
    moves is read from the model (``dashboard.fusion_reading``): under ``method: v3`` twin A's map at the
    fuse stage takes the channel statistics ``lam * stats(A) + (1 - lam) * stats(B)``, under v2/v1 the
    head's maps are mixed. Shown: the mixed features as RGB (PCA fitted on both unmixed maps, so colours
    stay comparable along the slider), the prediction from the mixed features (over twin A under v3,
    whose content it keeps; over the pixel blend of the twins otherwise, for orientation only), and the
    discriminator's domain probabilities, or "no adversary in this model" when ``domain_probs`` is None.
    State: ``pair`` (scene, A, B), ``fusion``, ``features``, ``domain_probs``, ``prediction`` and the
    three PNGs; ``features_figure()`` is the saved, labelled version of the feature picture.
    """

    def __init__(self, model, scenes, domain_names: Sequence[str] | None = None, source_domain: str = SOURCE_DOMAIN,
                 feature_level: str | None = None, score_threshold: float = 0.3, lam: float = 0.5):
        if not hasattr(model, "predict_mixed"):
            raise ConfigError(f"{type(model).__name__} has no predict_mixed(image_a, image_b, lam); build the model with MDSF")
        self.model = model
        self.scenes = _normalise_scenes(scenes)
        self.source_domain = source_domain
        fusable = {k: fusion_domains(v, source_domain) for k, v in self.scenes.items()}
        self.scenes = {k: v for k, v in self.scenes.items() if len(fusable[k]) >= 2}
        if not self.scenes:
            found = "; ".join(f"{k}: {', '.join(d) or 'none'}" for k, d in fusable.items())
            raise ConfigError("MDSF fuses two twins of one source image from two different pseudo-domains; no scene "
                              f"has twins of two pseudo-domains (besides {source_domain}: {found})")
        self.fusion = dashboard.fusion_reading(model)
        self.domain_names = list(domain_names or getattr(model, "domain_names", None) or [])
        self.feature_level = feature_level
        self.score_threshold = score_threshold
        self._busy = False
        first = next(iter(self.scenes))
        self.controls = {
            "scene": widgets.Dropdown(options=list(self.scenes), value=first, description="scene"),
            "domain_a": widgets.Dropdown(description="twin A"),
            "domain_b": widgets.Dropdown(description="twin B"),
            "lam": widgets.FloatSlider(value=lam, min=0.0, max=1.0, step=0.05, continuous_update=True,
                                       description="λ (A)", readout_format=".2f"),
        }
        self.feature_image = widgets.Image(format="png")
        self.probs_image = widgets.Image(format="png")
        self.prediction_image = widgets.Image(format="png")
        self.status = widgets.HTML()
        self.features = self.domain_probs = self.prediction = None
        self.feature_png = self.probs_png = self.prediction_png = b""
        self._set_domains(first)
        self.controls["scene"].observe(self._on_scene, names="value")
        self.controls["domain_a"].observe(self._on_domain_a, names="value")
        self.controls["domain_b"].observe(self._on_domains, names="value")
        self.controls["lam"].observe(self._on_lam, names="value")
        c = self.controls
        self.prediction_legend = widgets.HTML()
        self.formula = widgets.HTML()
        # max-content: a panel as wide as its title, so titles over small pictures do not run together
        panel = widgets.Layout(min_width="max-content", margin="0 12px 0 0")
        features_title = "mixed features (PCA → RGB)"
        if self.fusion.restyles:
            features_title = f"A restyled at {self.fusion.stage} (PCA → RGB)"
        panels = widgets.HBox([
            widgets.VBox([widgets.HTML(f"<b>{features_title}</b>"), self.feature_image], layout=panel),
            widgets.VBox([widgets.HTML("<b>prediction from mixed features</b>"), self.prediction_image,
                          self.prediction_legend], layout=panel),
            widgets.VBox([widgets.HTML("<b>domain discriminator</b>"), self.probs_image], layout=panel),
        ])
        super().__init__([widgets.HBox([c["scene"], c["domain_a"], c["domain_b"]]), self.formula, c["lam"], panels,
                          self.status])
        css_classes(self, "mdsf-explorer", {
            **self.controls, "features": self.feature_image, "probs": self.probs_image, "prediction": self.prediction_image,
            "prediction-legend": self.prediction_legend, "status": self.status, "formula": self.formula,
        })
        self._fit_basis()
        self.refresh()

    @property
    def pair(self) -> tuple[str, str, str]:
        """``(scene, domain_a, domain_b)``: the two pseudo-domain twins of one source image being fused."""
        c = self.controls
        return c["scene"].value, c["domain_a"].value, c["domain_b"].value

    def _set_domains(self, scene_id: str, a: str | None = None) -> None:
        domains = fusion_domains(self.scenes[scene_id], self.source_domain)
        a = a if a in domains else domains[0]
        others = [d for d in domains if d != a]
        b = self.controls["domain_b"].value
        self._busy = True
        try:
            self.controls["domain_a"].options = domains
            self.controls["domain_a"].value = a
            self.controls["domain_b"].options = others
            self.controls["domain_b"].value = b if b in others else others[0]
        finally:
            self._busy = False

    def _images(self):
        scene, a, b = self.pair
        return self.scenes[scene][a], self.scenes[scene][b]

    def _predict(self, lam: float) -> dict:
        import torch

        image_a, image_b = self._images()
        with torch.no_grad():
            out = self.model.predict_mixed(image_a, image_b, float(lam))
        missing = [k for k in ("features", "domain_probs", "prediction") if k not in out]
        if missing:
            raise ConfigError(f"predict_mixed returned no {', '.join(missing)} (keys: {', '.join(out)})")
        return out

    def mixed_map(self, lam: float) -> np.ndarray:
        """The ``[C,h,w]`` mixed feature map of the current pair at ``lam``."""
        return images.feature_map(self._predict(lam)["features"], self.feature_level)

    def _fit_basis(self) -> None:
        self.basis = images.PcaBasis([self.mixed_map(lam) for lam in (1.0, 0.0)])

    def _on_scene(self, change) -> None:
        self._set_domains(change["new"], self.controls["domain_a"].value)
        self._fit_basis()
        self.refresh()

    def _on_domain_a(self, change) -> None:
        if not self._busy:  # B never equals A: B's choices are the other pseudo-domains
            self._set_domains(self.controls["scene"].value, change["new"])
            self._fit_basis()
            self.refresh()

    def _on_domains(self, change) -> None:
        if not self._busy:
            self._fit_basis()
            self.refresh()

    def _on_lam(self, change) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Run ``predict_mixed`` at the slider's lambda and redraw the three images."""
        import html

        lam = float(self.controls["lam"].value)
        scene, a, b = self.pair
        out = self._predict(lam)
        image_a, image_b = (images.to_numpy_image(x) for x in self._images())
        self.features = images.feature_map(out["features"], self.feature_level)
        rgb = self.basis.rgb(self.features)
        self.feature_png = images.png_bytes(images.resize_nearest(rgb, image_a.shape[:2]))
        if out["domain_probs"] is None:  # no discriminator: v3 without an adversary, or no MDSF at all
            self.domain_probs, names = None, []
            self.probs_png = images.figure_png(images.message_figure(
                f"{dashboard.NO_ADVERSARY}:\nno discriminator posterior to show"))
        else:
            self.domain_probs = np.asarray(images.as_numpy(out["domain_probs"]), np.float64).reshape(-1)
            n = len(self.domain_probs)
            names = self.domain_names if len(self.domain_names) == n else _numbered_domain_names(n)
            self.probs_png = images.figure_png(images.probability_figure(self.domain_probs, names))
        self.prediction = out["prediction"]
        if self.fusion.restyles:  # the content is twin A's: draw its prediction over twin A
            background = image_a
        else:
            background = (lam * image_a.astype(np.float32) + (1 - lam) * image_b.astype(np.float32)).astype(np.uint8)
        self.prediction_png = images.png_bytes(images.render_prediction(background, self.prediction, self.score_threshold))
        self.prediction_legend.value = images.class_legend_html(self.prediction)
        self.feature_image.value = self.feature_png
        self.probs_image.value = self.probs_png
        self.prediction_image.value = self.prediction_png
        self.formula.value = f"<p>{html.escape(self.fusion.title(a, b))}</p>"
        top = names[int(self.domain_probs.argmax())] if names else f"none ({dashboard.NO_ADVERSARY})"
        mix = f"{lam:.0%} {a} + {1 - lam:.0%} {b}"
        mix = f"{a}'s content, channel statistics {mix}" if self.fusion.restyles else mix
        self.status.value = (f"λ = {lam:.2f}: twins of source image {html.escape(scene)}, {mix}; "
                             f"discriminator's top domain: {top}")

    def features_figure(self, lams: Sequence[float] | None = None):
        """A labelled Figure of the pair and its mixed features at ``lams`` (default 1, the slider's, 0):
        title, pixel axes, and a legend of what the colours are (``dashboard.mixed_features_figure``)."""
        scene, a, b = self.pair
        lams = lams if lams is not None else sorted({1.0, round(float(self.controls["lam"].value), 6), 0.0}, reverse=True)
        maps = {float(lam): self.mixed_map(float(lam)) for lam in lams}
        image_a, image_b = self._images()
        return dashboard.mixed_features_figure(image_a, image_b, maps, self.basis, names=(a, b), fusion=self.fusion,
                                               scene=scene)


def mdsf_explorer(model, scenes, domain_names: Sequence[str] | None = None, **kwargs) -> MdsfExplorer:
    """Explore MDSF's fusion of two pseudo-domain twins of one source image: pick a scene and two
    pseudo-domains, drag lambda.

    Args:
        model: implements ``predict_mixed(image_a, image_b, lam)`` (see ``MdsfExplorer``).
        scenes: ``{scene_id: {domain: image [3,H,W] in [0,1]}}`` (or a list of ``{domain: image}``); the
            source domain's image may be there (it is not offered), scenes with fewer than two
            pseudo-domain twins are left out.
        domain_names: names of the discriminator's outputs (default: ``model.domain_names``).
    """
    return MdsfExplorer(model, scenes, domain_names=domain_names, **kwargs)


class TwinExplorer(widgets.VBox):
    """Entropy and attribution across the twins of one scene (one column per domain).

    Controls (``.controls``): ``scene``, ``method`` (attribution method), ``alpha`` (overlay opacity).
    ``entropy_fn(image)`` returns a 2-D map (drawn as an overlay) or 1-D per-channel entropies (drawn
    as a histogram); ``attribution_fn(image, method, reference)`` returns a 2-D map (or ``[C,H,W]``,
    summed in absolute value); ``reference`` is the scene's first image (the source), so the function
    can fix one target there (a box, a class region) and score that same target on every twin.
    State: ``entropy``, ``attribution`` (per domain), ``stats_df``, ``grid_png``; ``figure()`` is the saved,
    labelled version of the grid (title, row names, colour bars).
    Stats: mean entropy per twin, and how much each twin's attribution agrees with the first twin's
    (Pearson correlation of the maps): low agreement means the network looks elsewhere in that weather.
    """

    def __init__(self, scenes, entropy_fn: Callable, attribution_fn: Callable | None = None,
                 methods: Sequence[str] = ("saliency",), alpha: float = 0.6):
        self.scenes = _normalise_scenes(scenes)
        self.entropy_fn = entropy_fn
        self.attribution_fn = attribution_fn
        self._cache: dict = {}
        first = next(iter(self.scenes))
        methods = list(methods) or ["default"]
        self.controls = {
            "scene": widgets.Dropdown(options=list(self.scenes), value=first, description="scene"),
            "method": widgets.Dropdown(options=methods, value=methods[0], description="attribution",
                                       disabled=attribution_fn is None),
            "alpha": widgets.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="overlay"),
        }
        self.grid_image = widgets.Image(format="png")
        self.stats_html = widgets.HTML()
        self.entropy = self.attribution = None
        self.stats_df = None
        self.grid_png = b""
        for control in self.controls.values():
            control.observe(self._on_change, names="value")
        c = self.controls
        super().__init__([widgets.HBox([c["scene"], c["method"], c["alpha"]]), self.grid_image, self.stats_html])
        css_classes(self, "twin-explorer", {**self.controls, "grid": self.grid_image, "stats": self.stats_html})
        self.refresh()

    def _cached(self, key, fn):
        if key not in self._cache:
            self._cache[key] = np.asarray(images.as_numpy(fn()), np.float32)
        return self._cache[key]

    def _on_change(self, change) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Compute (or reuse) the maps of every twin of the chosen scene and redraw the grid."""
        import pandas as pd

        scene, method, alpha = (self.controls[k].value for k in ("scene", "method", "alpha"))
        twins = self.scenes[scene]
        reference = next(iter(twins.values()))
        self.entropy, self.attribution = {}, {}
        rows_images, rows_entropy, rows_attr, stats = [], [], [], []
        for domain, image in twins.items():
            picture = images.to_numpy_image(image)
            ent = self._cached((scene, domain, "entropy"), lambda image=image: self.entropy_fn(image))
            self.entropy[domain] = ent
            rows_images.append(picture)
            if ent.ndim == 1:
                rows_entropy.append(images.histogram_image(ent, picture.shape[:2]))
            else:
                rows_entropy.append(images.heatmap_overlay(picture, ent, alpha, cmap="viridis"))
            row = {"domain": domain, "mean entropy": float(np.nanmean(ent))}
            if self.attribution_fn is not None:
                attr = self._cached((scene, domain, method),
                                    lambda image=image: self.attribution_fn(image, method, reference))
                if attr.ndim == 3:
                    attr = np.abs(attr).sum(axis=0)
                self.attribution[domain] = attr
                rows_attr.append(images.heatmap_overlay(picture, attr, alpha))
            stats.append(row)
        if self.attribution:
            reference = next(iter(self.attribution.values())).ravel()
            for row in stats:
                other = self.attribution[row["domain"]].ravel()
                same = other.shape == reference.shape and reference.std() > 0 and other.std() > 0
                row[f"attribution agreement with {next(iter(twins))}"] = (
                    float(np.corrcoef(reference, other)[0, 1]) if same else float("nan")
                )
        cells = [rows_images, rows_entropy] + ([rows_attr] if rows_attr else [])
        row_titles = ["image", "entropy"] + ([method] if rows_attr else [])
        grid = images.image_grid(cells, col_titles=[DOMAIN_SHORT.get(d, d) for d in twins], row_titles=row_titles)
        self.grid_png = images.png_bytes(grid)
        self.grid_image.value = self.grid_png
        self.stats_df = pd.DataFrame(stats).set_index("domain")
        self.stats_html.value = self.stats_df.to_html(float_format=lambda x: f"{x:.3f}", border=0)

    def figure(self, title: str | None = None, model_label: str | None = None):
        """The current scene's maps as a labelled Figure (``plots.plot_map_grid``): one column per twin,
        rows image / entropy / attribution, each map row with its colour bar on one scale across the twins.
        ``model_label`` (e.g. "seg drsf, seed 0") opens the default title. Per-channel entropies (1-D)
        have no map to draw: the row is left out and the title says so."""
        from drsf_kit.viz.plots import SYNTH_PREFIX, plot_map_grid

        scene, method = self.controls["scene"].value, self.controls["method"].value
        twins = self.scenes[scene]
        rows, cmaps, labels = {}, {}, {}
        maps_2d = {d: m for d, m in (self.entropy or {}).items() if m.ndim == 2}
        if maps_2d:
            rows["entropy"], cmaps["entropy"] = maps_2d, "viridis"
            labels["entropy"] = "prediction entropy"
        if self.attribution:
            rows[method] = self.attribution
            labels[method] = f"{method} attribution"
        if title is None:
            source = next(iter(twins))
            title = (f"{model_label + ': ' if model_label else ''}scene {scene}: where the model looks and how sure "
                     f"it is, per twin (attribution target chosen on {source})")
            if self.entropy and not maps_2d:
                title += "; per-channel entropies: see the table"
        # column keys as the plots read them: a twin other than the source is synthetic ("synth:<domain>")
        key = {d: d if d == SOURCE_DOMAIN else f"{SYNTH_PREFIX}{d}" for d in twins}
        return plot_map_grid({key[d]: image for d, image in twins.items()},
                             {row: {key[d]: m for d, m in maps.items()} for row, maps in rows.items()},
                             shared_scale=True, alpha=float(self.controls["alpha"].value), title=title,
                             cmaps=cmaps, labels=labels)


def twin_explorer(scenes, entropy_fn: Callable | None = None, attribution_fn: Callable | None = None,
                  methods: Sequence[str] | None = None, model=None, **kwargs) -> TwinExplorer:
    """Entropy and attribution maps across the twins of each scene (see ``TwinExplorer``).

    Args:
        scenes: ``{scene_id: {domain: image [3,H,W] in [0,1]}}``, the source image first.
        entropy_fn: ``image -> 2-D entropy map or 1-D per-channel entropies``.
        attribution_fn: ``(image, method, reference) -> 2-D map``; None hides the attribution row.
        methods: the attribution methods offered.
        model: a kit detector or segmenter: fills in whichever of the two functions is missing with
            ``analysis.explore.kit_twin_functions`` (prediction entropy; GradCAM / integrated gradients of one
            target fixed on the source image).
    """
    if model is not None:
        kit_entropy, kit_attribution, kit_methods = kit_twin_functions(model)
        entropy_fn = entropy_fn or kit_entropy
        if attribution_fn is None:
            attribution_fn, methods = kit_attribution, methods or kit_methods
    if entropy_fn is None:
        raise ConfigError("twin_explorer needs entropy_fn or a model")
    return TwinExplorer(scenes, entropy_fn, attribution_fn=attribution_fn, methods=methods or ("saliency",), **kwargs)
