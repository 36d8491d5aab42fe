"""An HTTP client for one peer's service (directly or through a router).

It moves bytes and maps transport failures onto typed errors; it verifies
nothing. Callers open what it fetches with :class:`pprm.node.requester.Requester`,
which checks the signature before parsing anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from pprm.errors import NetworkError, NetworkTimeoutError, RemoteError
from pprm.net.wire import MAX_ANSWER, MAX_WAIT, OCTETS, error_of

__all__ = ["PeerClient", "CONNECT_TIMEOUT", "read_limited"]

# Seconds to open a TCP connection: a peer that takes longer is treated as
# unreachable rather than slow.
CONNECT_TIMEOUT = 5.0
# Seconds for one request beyond any server-side wait (body transfer, queueing).
REQUEST_SLACK = 30.0


@dataclass(frozen=True)
class _Reply:
    status: int
    content_type: str
    content: bytes

    def json(self) -> object:
        return json.loads(self.content)


async def read_limited(resp: httpx.Response, limit: int) -> bytes | None:
    """A streamed response's body, or None once it exceeds ``limit`` bytes; closes the response."""
    try:
        chunks = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        await resp.aclose()


class PeerClient:
    """Requests to one peer's ``/v1`` API.

    Args:
        http: a shared ``httpx.AsyncClient`` (connection pooling across peers).
        base: the base URL (see :meth:`pprm.net.directory.Directory.base`).
        peer: the peer's state code, for messages.
    """

    def __init__(self, http: httpx.AsyncClient, base: str, peer: str) -> None:
        self._http = http
        self._base = base
        self.peer = peer

    def __repr__(self) -> str:
        return f"PeerClient({self.peer}, {self._base!r})"

    async def _request(self, method: str, path: str, *, content: bytes | None = None,
                       params: dict[str, str] | None = None, read_timeout: float = REQUEST_SLACK) -> _Reply:
        timeout = httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT)
        headers = {"content-type": OCTETS} if content is not None else None
        try:
            req = self._http.build_request(method, f"{self._base}/v1{path}", content=content, params=params,
                                           headers=headers, timeout=timeout)
            resp = await self._http.send(req, stream=True)
            body = await read_limited(resp, MAX_ANSWER)
        except httpx.TimeoutException:
            raise NetworkTimeoutError(f"{self.peer} did not answer in time") from None
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise NetworkError(f"{self.peer} is unreachable ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise NetworkError(f"{self.peer}: HTTP failure ({type(exc).__name__})") from None
        if body is None:
            raise NetworkError(f"{self.peer}: response larger than {MAX_ANSWER} bytes")
        reply = _Reply(resp.status_code, resp.headers.get("content-type", "").split(";")[0].strip(), body)
        if reply.status >= 400:
            raise self._remote_error(reply)
        return reply

    def _remote_error(self, reply: _Reply) -> RemoteError:
        try:
            parsed = error_of(reply.json())
        except ValueError:
            parsed = None
        if parsed is None:
            return RemoteError(f"{self.peer}: HTTP {reply.status} without a pprm error body",
                               status=reply.status, code="http")
        code, message = parsed
        return RemoteError(f"{self.peer}: {code}: {message}", status=reply.status, code=code)

    def _octets(self, reply: _Reply) -> bytes:
        if reply.content_type != OCTETS:
            raise NetworkError(f"{self.peer}: expected {OCTETS}, got {reply.content_type!r}")
        return reply.content

    async def card(self) -> bytes:
        """The peer's signed card (verify it before trusting it).

        Raises:
            NetworkError, NetworkTimeoutError, RemoteError.
        """
        return self._octets(await self._request("GET", "/card"))

    async def deliver(self, delivery: bytes) -> str:
        """Post a delivery (:func:`pprm.net.wire.pack_delivery`).

        Returns:
            The query id the peer accepted.

        Raises:
            NetworkError, NetworkTimeoutError, RemoteError (``replay``,
            ``authentication``, ``busy``, ...).
        """
        reply = await self._request("POST", "/queries", content=delivery)
        try:
            qid = reply.json()["query_id"]  # type: ignore[index]
        except (ValueError, KeyError, TypeError):
            raise NetworkError(f"{self.peer}: malformed reply to a delivery") from None
        if reply.status != 202 or not isinstance(qid, str):
            raise NetworkError(f"{self.peer}: unexpected reply to a delivery (HTTP {reply.status})")
        return qid

    async def answer(self, sender: str, query_id: str, wait: float = MAX_WAIT) -> bytes | None:
        """The reply to a query, waiting up to ``wait`` seconds for it.

        Returns:
            The signed answer or refusal, or None while the query is still pending.

        Raises:
            NetworkError, NetworkTimeoutError, RemoteError (``not-found``, or
            why the peer could not answer: ``expired``, ``replay``, ...).
        """
        wait = min(max(wait, 0.0), MAX_WAIT)
        reply = await self._request("GET", f"/answers/{sender}/{query_id}", params={"wait": f"{wait:.3f}"},
                                    read_timeout=wait + REQUEST_SLACK)
        if reply.status == 202:
            return None
        return self._octets(reply)

    async def follow_up(self, message: bytes) -> dict[str, str] | bytes:
        """Post a follow-up; the peer resolves and logs it, or refuses it with a signed refusal.

        Returns:
            The peer's acknowledgement (``status``, ``query_id``,
            ``followup_id``); or, when it refused a blind follow-up whose probe
            does not hit the record, the signed refusal's bytes, unverified
            (open them with :meth:`pprm.node.requester.Requester.open_followup_refusal`).

        Raises:
            NetworkError, NetworkTimeoutError, RemoteError (``token``, ``replay``, ...).
        """
        reply = await self._request("POST", "/followups", content=message)
        if reply.content_type == OCTETS:
            return reply.content
        try:
            ack = reply.json()
        except ValueError:
            raise NetworkError(f"{self.peer}: malformed reply to a follow-up") from None
        if not isinstance(ack, dict):
            raise NetworkError(f"{self.peer}: malformed reply to a follow-up")
        return {str(k): str(v) for k, v in ack.items()}
