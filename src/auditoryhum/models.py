"""The models a configuration names, loaded once on first use and shared by the stages and the commands.

``profile`` picks which models (lite: YAMNet + tag bridge + MiniLM; paper: an MLLM + Human-CLAP + mpnet);
``backend`` picks where they run: in this process, or on a Triton server whose model repository
(deploy/triton/models) wraps the very same backend classes, so both give the same results.
"""

from __future__ import annotations

from functools import cached_property

from auditoryhum.backends import Labeler, Scorer, TextEmbedder
from auditoryhum.config import Settings
from auditoryhum.labelers import SOUNDNET, YAMNET, LabelerSpec, labeler_specs
from auditoryhum.taxonomy.builder import TaxonomyBuilder
from auditoryhum.taxonomy.naming import TextGenerator


FOUR_BIT = {"on": True, "off": False, "auto": None}  # None: 4-bit where CUDA is, full weights elsewhere


class Models:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._labelers: dict[tuple[str, str | None], Labeler] = {}

    def _triton_backend(self, cls, model: str, **kwargs):
        # A service may start before Triton has loaded its models (they start side by side): wait, then connect.
        self.triton.wait_ready([model], timeout=self.settings.triton_wait_s)
        return cls(self.triton, model, **kwargs)

    @property
    def on_triton(self) -> bool:
        return self.settings.backend == "triton"

    @cached_property
    def triton(self):
        from auditoryhum.backends.triton import connect

        return connect(self.settings.triton_url)

    @cached_property
    def tagger(self):
        """YAMNet, the lite labeler's model (and the tag bridge's class names)."""
        if self.on_triton:
            from auditoryhum.backends.triton import TritonTagger

            return self._triton_backend(TritonTagger, "yamnet_patches", patch_hop_s=self.settings.patch_hop_s)
        from auditoryhum.backends.yamnet import YamnetTagger

        # Parallelism comes from the labeler's workers, one model call each; one thread per call avoids contention.
        return YamnetTagger(threads=1 if self.settings.workers > 1 else 0, patch_hop_s=self.settings.patch_hop_s)

    @cached_property
    def embedder(self) -> TextEmbedder:
        if self.on_triton:
            from auditoryhum.backends.triton import TritonTextEmbedder

            return self._triton_backend(TritonTextEmbedder, "text_embedder")
        from auditoryhum.backends.text import SentenceEmbedder, embedder_id

        path = self.settings.embedder_path
        return SentenceEmbedder(path, model_id=embedder_id(path)) if path else SentenceEmbedder()

    @cached_property
    def labeler(self) -> Labeler:
        """The profile's one labeler (its MLLM, or YAMNet): single-clip commands and the tag bridge use it."""
        return self._labeler(LabelerSpec(self.settings.labeler_model or YAMNET))

    @cached_property
    def labelers(self) -> list[Labeler]:
        """The run's labelers (setting ``labelers``); by default the profile's one."""
        return [self._labeler(spec) for spec in labeler_specs(self.settings.labelers, self.settings.labeler_model)]

    def _labeler(self, spec: LabelerSpec) -> Labeler:
        key = (spec.model, spec.name)
        if key not in self._labelers:  # each model loads once, however many commands ask for it
            self._labelers[key] = self._load_labeler(spec)
        return self._labelers[key]

    def _load_labeler(self, spec: LabelerSpec) -> Labeler:
        s = self.settings
        if spec.model == YAMNET:
            from auditoryhum.backends.yamnet import TaggerLabeler

            labeler = TaggerLabeler(self.tagger, top_k=s.top_k, min_score=s.min_score, evidence=s.evidence)
        elif spec.model == SOUNDNET:  # in this process on either backend: it has no Triton model
            from auditoryhum.backends.soundnet import SoundNetLabeler, SoundNetTagger

            labeler = SoundNetLabeler(SoundNetTagger(), top_k=s.top_k, evidence=s.evidence)
        elif self.on_triton:
            if spec.model != s.labeler_model:  # Triton's model repository serves one MLLM: labeler_model's
                raise ValueError(f"labeler {spec.model!r}: on Triton the only MLLM labeler is labeler_model "
                                 f"({s.labeler_model or 'unset'})")
            from auditoryhum.backends.triton import TritonLabeler

            labeler = self._triton_backend(TritonLabeler, "mllm_labeler")
        else:
            from auditoryhum.backends.mllm import MllmLabeler

            labeler = MllmLabeler(spec.model, load_in_4bit=FOUR_BIT[s.labeler_4bit])
        if spec.name:
            labeler.model_id = spec.name
        return labeler

    @cached_property
    def scorer(self) -> Scorer:
        s = self.settings
        if s.scorer_model:
            if self.on_triton:
                from auditoryhum.backends.triton import TritonScorer

                return self._triton_backend(TritonScorer, "clap_scorer")
            if s.scorer_model.endswith(".pt"):  # an original laion_clap checkpoint file
                from auditoryhum.backends.clap import LaionClapScorer

                return LaionClapScorer(s.scorer_model, enable_fusion=s.laion_fusion, amodel=s.laion_amodel,
                                       text_dir=s.laion_text_dir, resample_via_16k=s.clap_resample_via_16k)
            from auditoryhum.backends.clap import ClapScorer

            return ClapScorer(s.scorer_model, processor_path=s.scorer_processor,
                              resample_via_16k=s.clap_resample_via_16k)
        from auditoryhum.backends.tagbridge import TagBridgeScorer

        # Clips scored without the tagger's evidence (an MLLM's proposal, a Score call on bare audio) are tagged first.
        return TagBridgeScorer(self.embedder, self.tagger.model_id, self.tagger.class_names, tagger=self.tagger)

    @property
    def scorer_rate(self) -> int:
        """The sample rate the aligner loads audio at: the scorer's own (CLAP), else the labeler's."""
        return getattr(self.scorer, "sample_rate", None) or self.labeler.sample_rate

    @cached_property
    def namer(self) -> TextGenerator | None:
        """The LLM writing composite labels; None: the most frequent labels name each cluster."""
        if not self.settings.namer_model:
            return None
        if self.on_triton:
            from auditoryhum.backends.triton import TritonGenerator

            return self._triton_backend(TritonGenerator, "namer")
        from auditoryhum.taxonomy.naming import TransformersGenerator

        return TransformersGenerator(self.settings.namer_model)

    def taxonomy_builder(self, settings: Settings | None = None) -> TaxonomyBuilder:
        """With ``settings``: that run's clustering settings over these (already loaded) models."""
        s = settings or self.settings
        # The reference protocol sweeps k up to the unique count, as the authors did, unless k_max was given.
        k_max = s.k_max if s.protocol == "default" or "k_max" in s.model_fields_set else None
        return TaxonomyBuilder(self.embedder, k_min=s.k_min, k_max=k_max, lam=s.penalty_lambda,
                               algorithm=s.algorithm, namer=self.namer, representation=s.representation,
                               protocol=s.protocol, criterion=s.k_criterion)
