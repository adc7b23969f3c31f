"""Prometheus metrics, one registry per app so several apps (tests) never collide."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class ServiceMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    images: Counter
    inference: Histogram
    batch_images: Histogram
    queued_images: Gauge

    @classmethod
    def create(cls) -> ServiceMetrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter(
                "vae_http_requests",
                "HTTP requests by route template, method and status code",
                ["route", "method", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "vae_http_request_duration_seconds",
                "Time from request start to the end of the response body",
                ["route", "method"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            images=Counter(
                "vae_images_processed",
                "Images decoded, reconstructed, scored or sampled",
                ["endpoint"],
                registry=registry,
            ),
            inference=Histogram(
                "vae_model_inference_seconds",
                "Time spent in the model per forward pass (a dynamic batch counts once)",
                ["operation"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            batch_images=Histogram(
                "vae_batch_images",
                "Images per dynamic batch",
                buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                registry=registry,
            ),
            queued_images=Gauge(
                "vae_batch_queued_images", "Images waiting for the model", registry=registry
            ),
        )
