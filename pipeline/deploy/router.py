"""Which pipeline variant serves a new live stream, and what that stream is given.

:class:`StreamRouter` holds the loaded variants and the :class:`~speechpipe.pipeline.deploy.deployment.Deployment`;
once a stream's ``start`` has been read (its client key is in it) the live core asks
:meth:`StreamRouter.route` for the :class:`~speechpipe.pipeline.live.actions.LiveContext` of the
variant it was assigned: that variant's VAD, model, id and role, its shadow if any, and its
observers (telemetry labelled for the variant and role, plus the deployment's own).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.deploy.deployment import Deployment
from speechpipe.pipeline.deploy.variants import Variant
from speechpipe.pipeline.hooks import Observer
from speechpipe.pipeline.live.actions import LiveContext, SubmitReview
from speechpipe.pipeline.monitoring.service import DriftService
from speechpipe.pipeline.review.service import ReviewService

#: builds a stream's observers from its id, its audio format's attributes, the effective config
#: of the variant serving it and its role (telemetry).
StreamObservers = Callable[[str, dict, Config, str], Sequence[Observer]]


class StreamRouter:
    """See the module docstring."""

    def __init__(
        self,
        config: Config,
        variants: dict[str, Variant],
        deployment: Deployment,
        stream_observers: StreamObservers | None = None,
        drift: DriftService | None = None,
        review: ReviewService | None = None,
    ) -> None:
        self.config = config
        self.variants = variants
        self.deployment = deployment
        self.stream_observers = stream_observers
        self.drift = drift
        self.review = review

    @property
    def languages(self) -> tuple[str, ...]:
        lang = self.config.asr.language
        return (lang,) if lang else ("en",)

    def base_context(self) -> LiveContext:
        """What a stream is given before its ``start`` is read (the primary's, plus the route)."""
        primary = self.variants[self.deployment.controller.primary]
        return self._context(primary, "primary", None, route=self.route)

    def route(self, client_key: str | None, stream_id: str) -> LiveContext:
        """The context of the variant assigned to ``stream_id`` (sticky by ``client_key``)."""
        assignment = self.deployment.assign(client_key, stream_id)
        variant = self.variants[assignment.variant]
        ai = variant.config.automation.level != "human"  # at level human no model runs, no shadow either
        shadow = self.variants.get(assignment.shadow) if assignment.shadow and ai else None
        shared = shadow is not None and shadow.config.vad == variant.config.vad
        self.deployment.opened(stream_id, assignment, shared)
        return self._context(variant, assignment.role, shadow, stream_id=stream_id, shared=shared)

    def pinned_context(self, name: str) -> LiveContext:
        """What a stream that asked for variant ``name`` itself is given (an OpenAI request naming
        it as its model): that variant, whatever the deployment routes, without a shadow. Its
        finals are not the deployment's traffic (a canary's gates compare routed streams only);
        telemetry labels it with the variant's role in the deployment, drift watches it."""
        variant = self.variants[name]
        role = self.deployment.controller.role_of(name)

        def route(_client_key: str | None, stream_id: str) -> LiveContext:
            return self._context(variant, role, None, stream_id=stream_id, routed=False)

        return self._context(variant, role, None, route=route, routed=False)

    def _context(
        self,
        variant: Variant,
        role: str,
        shadow: Variant | None,
        *,
        stream_id: str = "",
        shared: bool = True,
        route: Callable[[str | None, str], LiveContext] | None = None,
        routed: bool = True,
    ) -> LiveContext:
        factory = self.stream_observers
        deployment = self.deployment
        drift = self.drift
        review = self.review

        def observers(sid: str, attributes: dict) -> list[Observer]:
            found = list(factory(sid, attributes, variant.config, role)) if factory else []
            if routed:
                found.append(deployment.observer(sid, variant.name))
            if drift is not None and variant.config.automation.level != "human":  # no model output to watch
                found.append(drift.observer(variant.name))
            return found

        def on_review(sid: str, request: SubmitReview) -> None:
            review.enqueue(variant.name, role, sid, request, variant.config.automation.level)

        return LiveContext(
            settings=self.config.server,
            vad=variant.config.vad,
            languages=self.languages,
            model=variant.engine.model_name,
            variant=variant.name,
            stream_observers=observers,
            role=role,
            variant_id=variant.variant_id,
            shadow_variant=shadow.name if shadow else "",
            shadow_vad=None if shadow is None or shared else shadow.config.vad,
            on_shadow=deployment.on_shadow if shadow else None,
            route=route,
            automation=variant.config.automation,
            on_review=on_review if review is not None else None,
        )
