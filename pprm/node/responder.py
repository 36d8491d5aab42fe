"""Answering a query: the responder side of step one.

The flow keeps the roles apart: the key service verifies the query, the
matcher (public material only) computes the masked encrypted result, the key
service decrypts it to capped candidate tokens, and the node signs and boxes
the answer. The probe exists only in memory for the duration of the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pprm.node.keyservice import KeyService
from pprm.node.state import State
from pprm.protocol.envelope import Header, new_id, seal_envelope
from pprm.protocol.messages import AnswerBody

__all__ = ["Responder"]

Progress = Callable[[int, int], None]


class Responder:
    """Answers signed queries addressed to one state.

    Args:
        state: the responding state.
    """

    def __init__(self, state: State) -> None:
        self.state = state
        self.key_service = KeyService(state)

    def __repr__(self) -> str:
        return f"Responder({self.state.config.name})"

    def answer(self, query: bytes, *, sink: Callable[[bytes], None] | None = None,
               progress: Progress | None = None, now: float | None = None) -> bytes:
        """Answer one query message.

        Args:
            query: the signed query bytes.
            sink: called with the answer bytes before the query is marked used
                and logged; if it raises, nothing is recorded.
            progress: called with ``(blocks done, total)`` while matching.
            now: clock override for tests.

        Returns:
            The signed answer, boxed to the requester.

        Raises:
            MessageError and subclasses, UnknownPeerError, ParameterError,
            TemplateError: the query is refused and no state changes.
        """
        st = self.state
        t = time.time() if now is None else now
        with st.lock():
            vq = self.key_service.verify_query(query, t)
            # One view of the gallery for both roles: the matcher's public
            # material, and the index the key service maps hits through.
            gallery = st.gallery()
            result = st.matcher(gallery).match(vq.body.probe, st.config.threshold, progress)
            release = self.key_service.release(query, result, t, gallery)
            qh = vq.envelope.header
            body = AnswerBody(qh.id, bool(release.tokens), release.tokens)
            ident = st.identity()
            header = Header("answer", st.config.name, qh.sender, new_id(), int(t),
                            int(t) + st.config.token_ttl, st.config.parameter_set.digest,
                            "sealed", qh.id)
            answer = seal_envelope(ident, header, ident.box_to(vq.envelope.sender, body.to_bytes()))
            if sink is not None:
                sink(answer)
            self.key_service.commit_release(release, header.id, t)
        return answer
