"""Which pipeline variant serves a new live stream, and what that stream is given.

:class:`StreamRouter` holds the loaded variants and the :class:`~speechpipe.pipeline.deploy.deployment.Deployment`;
once a stream's ``start`` has been read (its client key is in it) the live core asks
:meth:`StreamRouter.route` for the :class:`~speechpipe.pipeline.live.actions.LiveContext` of the
variant it was assigned: that variant's VAD, model, id and role, its shadow if any, its observers
(what the server's parts want on a stream of that variant and role, asked with a
:class:`~speechpipe.pipeline.server.parts.StreamInfo`) and where its segments go to review.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from speechpipe.pipeline.config import Config
from speechpipe.pipeline.deploy.deployment import Deployment, SessionOpen
from speechpipe.pipeline.deploy.variants import LoadedVariant
from speechpipe.pipeline.hooks import Observer
from speechpipe.pipeline.live.actions import LiveContext, ReviewRequest
from speechpipe.pipeline.protocol import ProtocolError, Resume
from speechpipe.pipeline.server.parts import StreamInfo

#: the observers the server's parts want on a stream.
StreamObservers = Callable[[StreamInfo], Sequence[Observer]]
#: takes a segment a stream sends to people (the review queue).
ReviewSink = Callable[[StreamInfo, ReviewRequest], None]


class StreamRouter:
    """See the module docstring."""

    def __init__(
        self,
        config: Config,
        variants: dict[str, LoadedVariant],
        deployment: Deployment,
        stream_observers: StreamObservers | None = None,
        review: ReviewSink | None = None,
    ) -> None:
        self.config = config
        self.variants = variants
        self.deployment = deployment
        self.stream_observers = stream_observers
        self.review = review

    @property
    def languages(self) -> tuple[str, ...]:
        lang = self.config.asr.language
        return (lang,) if lang else ("en",)

    def base_context(self, principal: str | None = None) -> LiveContext:
        """What a stream opened by ``principal`` is given before its ``start`` is read (the
        primary's, plus the route)."""
        primary = self.variants[self.deployment.controller.primary]
        route = functools.partial(self.route, principal=principal)
        resume = functools.partial(self.resume, principal=principal)
        return self._context(primary, "primary", None, route=route, resume=resume, principal=principal)

    def route(self, client_key: str | None, stream_id: str, principal: str | None = None) -> LiveContext:
        """The context of the variant assigned to ``stream_id`` (sticky by ``client_key``)."""
        assignment = self.deployment.assign(client_key, stream_id)
        variant = self.variants[assignment.variant]
        ai = variant.config.automation.runs_model  # at level human no model runs, no shadow either
        shadow = self.variants.get(assignment.shadow) if assignment.shadow and ai else None
        shared = shadow is not None and shadow.config.vad == variant.config.vad
        self.deployment.opened(stream_id, assignment, shared, principal)
        return self._context(variant, assignment.role, shadow, stream_id=stream_id, shared=shared, principal=principal)

    def resume(self, resume: Resume, principal: str | None = None) -> LiveContext:
        """The context of a stream that resumes ``resume.session`` (fetched already): the variant
        that served it, whatever the deployment routes new streams to now. A ProtocolError when
        it cannot be resumed: ``unknown_session`` (unknown, or another principal's: the same
        answer), ``session_open`` (still open on this server)."""
        try:
            assignment, shared = self.deployment.resume(resume.session, principal)
        except KeyError as exc:
            raise ProtocolError("unknown_session", str(exc.args[0])) from None
        except SessionOpen as exc:
            raise ProtocolError("session_open", str(exc)) from None
        variant = self.variants.get(assignment.variant)
        if variant is None:
            raise ProtocolError(
                "unknown_session", f"session {resume.session!r} was served by {assignment.variant!r}, not served here"
            )
        ai = variant.config.automation.runs_model
        shadow = self.variants.get(assignment.shadow) if assignment.shadow and ai else None
        shared = shared and shadow is not None
        return self._context(
            variant, assignment.role, shadow, stream_id=resume.session, shared=shared, principal=principal
        )

    def pinned_context(self, name: str, principal: str | None = None) -> LiveContext:
        """What a stream that asked for variant ``name`` itself is given (an OpenAI request naming
        it as its model): that variant, whatever the deployment routes, without a shadow. Its
        finals are not the deployment's traffic (a canary's gates compare routed streams only);
        telemetry labels it with the variant's role in the deployment, drift watches it."""
        variant = self.variants[name]
        role = self.deployment.controller.role_of(name)

        def route(_client_key: str | None, stream_id: str) -> LiveContext:
            return self._context(variant, role, None, stream_id=stream_id, routed=False, principal=principal)

        return self._context(variant, role, None, route=route, routed=False, principal=principal)

    def _context(
        self,
        variant: LoadedVariant,
        role: str,
        shadow: LoadedVariant | None,
        *,
        stream_id: str = "",
        shared: bool = True,
        route: Callable[[str | None, str], LiveContext] | None = None,
        resume: Callable[[Resume], LiveContext] | None = None,
        routed: bool = True,
        principal: str | None = None,
    ) -> LiveContext:
        factory = self.stream_observers
        review = self.review

        def info(sid: str, attributes: dict) -> StreamInfo:
            return StreamInfo(sid, attributes, variant.name, role, variant.config, principal, routed)

        def observers(sid: str, attributes: dict) -> list[Observer]:
            return list(factory(info(sid, attributes))) if factory else []

        def on_review(sid: str, request: ReviewRequest) -> None:
            review(info(sid, {}), request)

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
            on_shadow=self.deployment.on_shadow if shadow else None,
            route=route,
            resume=resume,
            fetch_session=self.deployment.fetch_session if resume is not None else None,
            automation=variant.config.automation,
            on_review=on_review if review is not None else None,
            review=variant.config.review,
            window_s=variant.engine.config.window_s,
            gap_s=variant.engine.config.gap_s,
        )
