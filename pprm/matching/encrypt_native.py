"""Symmetric encryption of whole gallery blocks in C, with SEAL's distribution.

Enrolment encrypts ``d`` ciphertexts per block. Through SEAL's Python binding
each one costs an encode, an ``encrypt_symmetric`` and a trip through a
temporary file to reach its residues (about 3.5 ms at N = 8192).
:class:`NativeEncryptor` produces the same ciphertexts, in distribution, for
a whole block in a few C calls (``native/pprm_encrypt.c``) on arrays held
here. It serves the sets that store ciphertexts at one data prime (the
sealed profile's real and complex sets); the SEAL path in
:class:`pprm.matching.owner.GalleryOwner` stays for the numpy backend and as
the reference the tests compare against.

What SEAL 4.1 computes for ``encrypt_symmetric`` of an NTT-form CKKS
plaintext at the data level (``encrypt_zero_symmetric`` then the plaintext
added), and what is computed here, word for word in the same ring:

* ``c1 = a``, uniform on ``[0, q0)`` and taken directly as the NTT form
  (the NTT is a bijection of ``Z_q0^N``, so a uniform vector is uniform in
  either domain; SEAL does the same for NTT-form ciphertexts);
* ``c0 = -(a * s + NTT(e)) + NTT(m)``, computed as ``NTT(m - e) - a * s``
  (the NTT is linear and all words are canonical residues, so the words are
  the same), with ``s`` the secret key's NTT residues at q0 and ``e``
  SEAL's centered binomial noise (21 + 21 bits, variance 10.5);
* ``m`` is the slot values encoded at ``2**gallery_scale_bits``:
  :meth:`pprm.crypto.embedding.SlotTransform.encode_complex` (numpy FFT,
  rounded), the same real polynomial SEAL's encoder rounds.

Randomness comes from a ChaCha20 keystream under a seed fresh from the OS
CSPRNG (:func:`pprm.crypto.csprng.csprng_bytes`, one seed per 32 rows for
each of ``a`` and ``e``; SEAL seeds its own generator from the OS the same
way); the C code draws none of its own.
``a`` is rejection-sampled: each 64-bit word is masked to ``bitlen(q0)``
bits and kept when below q0, an acceptance rate of ``q0 / 2**bitlen(q0)``
(at least 1/2 for any prime; ``1 - 8.5e-14`` for the 60-bit prime
``0x0ffffffffffe8001`` of ``pprm-sealed-n8192-complex-v1``), which makes
every kept word exactly uniform (SEAL rejects 64-bit words above the
largest multiple of q0, which is uniform up to ``2**-64``). The noise takes
six bytes per coefficient, as SEAL's ``sample_poly_cbd``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.crypto.csprng import csprng_bytes
from pprm.crypto.embedding import slot_transform
from pprm.errors import BackendError, CiphertextError, GalleryError, ParameterError
from pprm.matching import kernel_native
from pprm.matching.gallery import pack_columns
from pprm.matching.mask_kernel import ntt_table

__all__ = ["NativeEncryptor", "ROWS_PER_CALL"]

# Rows encrypted per C call, and the progress granularity: GalleryOwner
# reports progress every 32 ciphertexts. Chunks also keep numpy's
# temporaries small (a whole block at once spends more time faulting in
# fresh pages than computing) and the random buffers at ~3.5 MB per call.
ROWS_PER_CALL = 32

# A pool of random words runs out with negligible probability (see
# _pool_words); if it ever does, the rows are redrawn with a larger, fresh one.
_MAX_ATTEMPTS = 4


def _secret_ntt_residues(ctx: CkksContext, secret_key: seal.SecretKey) -> np.ndarray:
    """The secret key's NTT residues at the first data prime, ``uint64[N]``.

    Read through ``SecretKey.data()``, which TenSEAL returns as a *reference*
    to the key's own plaintext (modifying it would modify the key), word by
    word. SEAL's serialisation would serve too, but the binding writes it
    only to a path: a copy of the key in a file, even in RAM, is worse than
    reading the words in place.
    """
    n = ctx.n
    data = secret_key.data()  # never modify: it is the key itself
    key_primes = len(ctx.seal.key_context_data().parms().coeff_modulus())
    if (tuple(data.parms_id()) != tuple(ctx.seal.key_parms_id()) or not data.is_ntt_form()
            or data.coeff_count() != key_primes * n):
        # The message states the mismatch only: no key word goes into it.
        raise ParameterError(f"the secret key does not belong to {ctx.params.name}")
    # The first N words of the key-level plaintext are its residues at q0.
    return np.fromiter(map(data.__getitem__, range(n)), dtype=np.uint64, count=n)


def _pool_words(need: int, q: int) -> int:
    """Random words enough to accept ``need`` of them with probability 1 - 2**-40 or better.

    The number of draws is negative binomial: mean ``need / p``, standard
    deviation ``sqrt(need * (1 - p)) / p`` with ``p = q / 2**bitlen(q)``.
    Ten standard deviations plus 64 words put running out beyond 2**-40
    for any ``p >= 1/2`` (and near 2**-1000 for pprm's primes).
    """
    p = q / float(1 << q.bit_length())
    return math.ceil(need / p + 10.0 * math.sqrt(need * (1.0 - p)) / p) + 64


class NativeEncryptor:
    """Encrypts gallery blocks under the secret key, in C, as SEAL's ``encrypt_symmetric`` does.

    Args:
        ctx: a sealed-profile context whose ciphertexts live at one data
            prime (real or complex packing).
        secret_key: the state's CKKS secret key for ``ctx``.
        threads: pthreads per C call; None takes
            :func:`~pprm.matching.kernel_native.default_threads` (0: all cores).

    Raises:
        BackendError: the native extension is not built.
        ParameterError: the context has more than one data prime or an
            unknown packing, or the key is not a key of this parameter set.

    Warning:
        The secret key's residues at q0 are copied into this object (a numpy
        array), so they sit in this process's memory as SEAL's own copy of
        the key does. :meth:`close` (also run on deletion, and by ``with``)
        zeroes that copy; a C call also wipes the key-derived words it
        computes. Python's ``bytes`` holding the noise (from
        :func:`~pprm.crypto.csprng.csprng_bytes`) cannot be wiped in place:
        they are released to the allocator, as
        SEAL releases its noise polynomials to its memory pool. The
        encryptor never puts a key word into a repr, a log or an exception.
    """

    def __init__(self, ctx: CkksContext, secret_key: seal.SecretKey, *, threads: int | None = None) -> None:
        self._s = np.zeros(0, dtype=np.uint64)  # so that close() works whatever fails below
        self._name = ctx.params.name
        self._ffi, self._lib = kernel_native.handles()
        if len(ctx.moduli) != 1:
            raise ParameterError(f"native encryption needs one data prime; {self._name} has {len(ctx.moduli)}")
        if ctx.params.packing not in ("real", "complex"):
            raise ParameterError(f"native encryption does not know packing {ctx.params.packing!r}")
        self.ctx = ctx
        self.n = ctx.n
        self.q = int(ctx.moduli[0])
        self._threads = kernel_native.default_threads() if threads is None else int(threads)
        self._scale_bits = ctx.params.gallery_scale_bits
        self._transform = slot_transform(self.n)
        table = ntt_table(self.q, self.n)
        self._keep: list[Any] = []  # cffi views the table struct points into must outlive it
        self._t = self._ffi.new("pprm_ntt_table *")
        self._t.q, self._t.n = table.q, table.n
        self._t.roots = self._view("uint64_t[]", table.roots)
        self._t.roots_shoup = self._view("uint64_t[]", table.roots_shoup)
        self._t.inv_roots = self._view("uint64_t[]", table.inv_roots)
        self._t.inv_roots_shoup = self._view("uint64_t[]", table.inv_roots_shoup)
        self._t.inv_n, self._t.inv_n_shoup = table.inv_n, table.inv_n_shoup
        self._s = _secret_ntt_residues(ctx, secret_key)
        self._closed = False

    def __repr__(self) -> str:
        return f"NativeEncryptor({self._name})"

    def __enter__(self) -> NativeEncryptor:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Best effort: the copy of the key is zeroed however the object goes.
        s = getattr(self, "_s", None)
        if s is not None:
            s.fill(0)

    def close(self) -> None:
        """Zero this object's copy of the secret key; later encryptions raise :class:`BackendError`."""
        self._s.fill(0)
        self._closed = True

    def _view(self, ctype: str, arr: np.ndarray) -> Any:
        v = self._ffi.from_buffer(ctype, arr, require_writable=False)
        self._keep.append(v)
        return v

    def encrypt_columns(self, columns: np.ndarray,
                        progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Encrypt ``columns[k]`` (component k by position) into a block's residues.

        Args:
            columns: ``float64[d, templates_per_block]`` values by position
                (packed into slots by :func:`~pprm.matching.gallery.pack_columns`).
            progress: called with the number of ciphertexts done after every
                :data:`ROWS_PER_CALL` of them and after the last one.

        Returns:
            ``uint64[d, 2, 1, N]``: ciphertext ``k``'s ``(c0, c1)`` in NTT
            form at q0, as ``CkksContext.to_residues`` gives SEAL's.

        Raises:
            BackendError: the encryptor is closed, the C code ran out of
                memory, or the random pool kept running out.
            CiphertextError: a value is not finite, or encodes to a
                coefficient beyond q0.
            GalleryError: ``columns`` has the wrong number of positions.
        """
        if self._closed:
            raise BackendError("the native encryptor is closed")
        cols = np.asarray(columns, dtype=np.float64)
        if cols.ndim != 2:
            raise GalleryError(f"expected columns of shape (d, positions), got {cols.shape}")
        d = cols.shape[0]
        out = np.empty((d, 2, 1, self.n), dtype=np.uint64)
        spans = [(start, min(d, start + ROWS_PER_CALL)) for start in range(0, d, ROWS_PER_CALL)]
        if not spans:
            return out
        # Drawing the randomness costs about as much as the encoding, and
        # the keystream releases the GIL: the next span's bytes are drawn on a
        # helper thread while this one is encoded and encrypted. Each draw
        # is used by exactly one span.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="pprm-random") as helper:
            drawn = helper.submit(self._draw, spans[0][1] - spans[0][0])
            for i, (start, stop) in enumerate(spans):
                # Span by span: numpy's temporaries stay small and cache-resident.
                slot_values = pack_columns(cols[start:stop], self.ctx.params)
                m = self._transform.encode_complex(slot_values, self._scale_bits)
                rand = drawn.result()
                if i + 1 < len(spans):
                    drawn = helper.submit(self._draw, spans[i + 1][1] - spans[i + 1][0])
                self._encrypt_rows(m, out[start:stop], rand)
                del rand
                if progress is not None:
                    progress(stop)
        return out

    def decrypt_coefficients(self, residues: np.ndarray) -> np.ndarray:
        """Decrypt a block's ciphertexts to their plaintext coefficients, in C.

        ``m = INTT(c0 + c1 * s)`` centred into ``(-q0/2, q0/2]``, the words
        SEAL's ``Decryptor`` computes for these ciphertexts.

        Args:
            residues: ``uint64[d, 2, 1, N]`` as the gallery stores a block.

        Returns:
            ``int64[d, N]``: each ciphertext's plaintext polynomial (the
            encoded values plus the encryption noise).

        Raises:
            BackendError: the encryptor is closed, a word is not reduced, or
                memory ran out.

        Warning:
            The result is plaintext: the caller decodes it in memory and
            must not write, log or send it.
        """
        if self._closed:
            raise BackendError("the native encryptor is closed")
        ct = np.ascontiguousarray(residues, dtype=np.uint64)
        if ct.ndim != 4 or ct.shape[1:] != (2, 1, self.n):
            raise BackendError(f"expected [d, 2, 1, {self.n}] residues, got {list(ct.shape)}")
        out = np.empty((ct.shape[0], self.n), dtype=np.int64)
        rc = self._lib.pprm_decrypt_block(
            self._ffi.from_buffer("uint64_t[]", ct, require_writable=False),
            self._ffi.from_buffer("uint64_t[]", self._s, require_writable=False), self._t,
            self._ffi.from_buffer("int64_t[]", out, require_writable=True), ct.shape[0], self._threads)
        if rc == self._lib.PPRM_ENC_ENOMEM:
            raise BackendError("native decryption ran out of memory")
        if rc != self._lib.PPRM_ENC_OK:
            raise BackendError("native decryption: a ciphertext word is not reduced")
        return out

    def _draw(self, rows: int, words: int | None = None) -> tuple[bytes, bytes, int]:
        """Fresh randomness for ``rows`` ciphertexts: ``(pool of words, noise bytes, words)``."""
        if words is None:
            words = _pool_words(rows * self.n, self.q)
        return csprng_bytes(8 * words), csprng_bytes(self._lib.PPRM_ENC_NOISE_BYTES * rows * self.n), words

    def _encrypt_rows(self, m: np.ndarray, out: np.ndarray,
                      rand: tuple[bytes, bytes, int] | None = None) -> None:
        """Encrypt the integer plaintexts ``m`` (``int64[r, N]``) into ``out`` (``uint64[r, 2, 1, N]``).

        ``rand`` is a draw of :meth:`_draw` for these rows, used once; None draws here.
        """
        ffi, lib = self._ffi, self._lib
        rows = m.shape[0]
        m_c = np.ascontiguousarray(m, dtype=np.int64)
        draw = rand if rand is not None else self._draw(rows)
        del rand
        for _ in range(_MAX_ATTEMPTS):
            pool, noise, words = draw
            rc = lib.pprm_encrypt_block(
                ffi.from_buffer("int64_t[]", m_c, require_writable=False),
                ffi.from_buffer("uint64_t[]", pool, require_writable=False), words,
                ffi.from_buffer("uint8_t[]", noise, require_writable=False),
                ffi.from_buffer("uint64_t[]", self._s, require_writable=False),
                self._t,
                ffi.from_buffer("uint64_t[]", out, require_writable=True),
                rows, self._threads,
            )
            if rc == lib.PPRM_ENC_OK:
                return
            if rc == lib.PPRM_ENC_EAGAIN:
                # Fresh randomness, twice as many words. Discarding a pool
                # that ran short leaves the distribution exact: the accepted
                # words are independent of how many were rejected.
                draw = self._draw(rows, 2 * words)
                continue
            if rc == lib.PPRM_ENC_ENOMEM:
                raise BackendError("native encryption ran out of memory")
            # EINVAL: the key words are checked too, but this context's key always passes.
            raise CiphertextError("native encryption refused a plaintext coefficient beyond the data prime")
        raise BackendError("native encryption: the random pool ran out repeatedly")
