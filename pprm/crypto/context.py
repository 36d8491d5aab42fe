"""A SEAL context built from a named parameter set, plus residue access.

:class:`CkksContext` is the one place that touches ``tenseal.sealapi``
objects for encoding, evaluation and (de)serialisation. It never holds a
secret key: keys live in :mod:`pprm.crypto.keys` and are handed to the roles
that may use them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import tenseal
import tenseal.sealapi as seal

from pprm.crypto import seal_stream
from pprm.crypto.blind_params import BlindParameterSet
from pprm.crypto.params import ParameterSet
from pprm.errors import BackendError, CiphertextError

__all__ = ["CkksContext", "BlindContext", "SealContext", "RingParams", "TENSEAL_VERSION"]

# The residue layout and stream format are checked against this release;
# pyproject.toml pins the same version.
TENSEAL_VERSION = "0.3.18"

if tenseal.__version__ != TENSEAL_VERSION:  # pragma: no cover - guarded by the pin
    raise BackendError(f"pprm needs tenseal=={TENSEAL_VERSION}, found {tenseal.__version__}")


def _scratch_dir() -> str:
    # SEAL's Python binding only reads and writes files; keep them in RAM
    # where the OS offers it. Only public material and ciphertexts pass here,
    # inside a fresh mkdtemp directory (mode 0700, unpredictable name).
    shm = "/dev/shm"  # noqa: S108
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    return tempfile.mkdtemp(prefix="pprm-seal-", dir=base)


class RingParams(Protocol):
    """What a SEAL context needs from a parameter set of either profile."""

    @property
    def name(self) -> str: ...
    @property
    def poly_modulus_degree(self) -> int: ...
    @property
    def coeff_modulus_bits(self) -> tuple[int, ...]: ...
    @property
    def insecure(self) -> bool: ...
    @property
    def slots(self) -> int: ...
    @property
    def templates_per_block(self) -> int: ...


class SealContext:
    """SEAL objects for one parameter set of either profile.

    Args:
        params: a validated parameter set.

    Raises:
        BackendError: SEAL rejects the parameters.
    """

    params: RingParams

    def __init__(self, params: RingParams) -> None:
        self.params = params
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(
            seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_modulus_bits)))
        # Insecure sets are below SEAL's own table too; our stricter 2024
        # bound is enforced in pprm.crypto.params for the secure ones.
        level = seal.SEC_LEVEL_TYPE.NONE if params.insecure else seal.SEC_LEVEL_TYPE.TC128
        self.seal = seal.SEALContext(parms, True, level)
        if not self.seal.parameters_set():
            raise BackendError(f"SEAL rejected {params.name}: {self.seal.parameters_error_message()}")
        self.encoder = seal.CKKSEncoder(self.seal)
        self.evaluator = seal.Evaluator(self.seal)
        data = self.seal.first_context_data()
        self.parms_id: tuple[int, int, int, int] = tuple(self.seal.first_parms_id())
        self.moduli: tuple[int, ...] = tuple(m.value() for m in data.parms().coeff_modulus())
        # parms_id per number of data primes: levels[L] is the data level,
        # levels[1] the last one a rescale chain can reach.
        self.levels: dict[int, tuple[int, int, int, int]] = {}
        cd = data
        while cd is not None:
            self.levels[len(cd.parms().coeff_modulus())] = tuple(cd.parms_id())
            cd = cd.next_context_data()
        self.n = params.poly_modulus_degree
        # CKKS slots per ciphertext (N/2); a gallery block holds
        # params.templates_per_block templates (N with complex packing).
        self.slots = params.slots
        self.templates_per_block = params.templates_per_block
        self._dir = _scratch_dir()
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._dir, True)
        self._lock = threading.Lock()
        self._version = self._probe_version()

    # -- files ---------------------------------------------------------
    def _path(self) -> str:
        return os.path.join(self._dir, uuid.uuid4().hex)

    def save_bytes(self, obj: Any) -> bytes:
        """Serialise a public SEAL object (never a secret key) to bytes.

        Args:
            obj: a ciphertext, plaintext, public key, or (serialisable)
                Galois keys: anything with SEAL's ``save(path)``.

        Returns:
            SEAL's stream, compressed as SEAL saves it by default.
        """
        path = self._path()
        try:
            obj.save(path)
            with open(path, "rb") as fh:
                return fh.read()
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def _load_into(self, obj: seal.Ciphertext | seal.PublicKey, blob: bytes) -> None:
        path = self._path()
        try:
            with open(path, "wb") as fh:
                fh.write(blob)
            obj.load(self.seal, path)
        except (RuntimeError, ValueError) as exc:
            raise CiphertextError(f"SEAL refused the object: {str(exc).splitlines()[0][:120]}") from None
        finally:
            if os.path.exists(path):
                os.unlink(path)

    def _probe_version(self) -> tuple[int, int]:
        blob = self.save_bytes(seal.Ciphertext(self.seal))
        _magic, _h, major, minor, _c, _r, _t = seal_stream.HEADER.unpack_from(blob)
        return (major, minor)

    # -- encoding ------------------------------------------------------
    def encode(self, values: Sequence[float] | Sequence[complex] | np.ndarray, scale_bits: int) -> seal.Plaintext:
        """Encode slot values (padded with zeros to the slot count) at scale 2**scale_bits.

        Args:
            values: at most :attr:`slots` real or complex values; a complex
                array uses the imaginary parts of the slots too.
            scale_bits: log2 of the scale.

        Returns:
            The plaintext at the data level.

        Raises:
            CiphertextError: too many values, or not one-dimensional.
        """
        raw = np.asarray(values)
        dtype = np.complex128 if np.iscomplexobj(raw) else np.float64
        arr = raw.astype(dtype)
        if arr.ndim != 1 or arr.size > self.slots:
            raise CiphertextError(f"cannot encode {arr.shape} values into {self.slots} slots")
        full = np.zeros(self.slots, dtype=dtype)
        full[: arr.size] = arr
        pt = seal.Plaintext()
        # A list of Python complex selects SEAL's complex encoder overload.
        self.encoder.encode(full.tolist(), self.parms_id, float(2**scale_bits), pt)
        return pt

    def encode_constant(self, value: float | complex, scale_bits: int) -> seal.Plaintext:
        """Encode one real or complex constant in every slot at scale 2**scale_bits."""
        pt = seal.Plaintext()
        const: float | complex = complex(value) if isinstance(value, complex) else float(value)
        self.encoder.encode(const, self.parms_id, float(2**scale_bits), pt)
        return pt

    def decode(self, pt: seal.Plaintext) -> np.ndarray:
        """Decode a plaintext to its real slot values (real parts)."""
        return np.asarray(self.encoder.decode_double(pt), dtype=np.float64)

    def decode_complex(self, pt: seal.Plaintext) -> np.ndarray:
        """Decode a plaintext to its complex slot values (``complex128[slots]``)."""
        return np.asarray(self.encoder.decode_complex(pt), dtype=np.complex128)

    def conjugate(self, ct: seal.Ciphertext, galois_keys: seal.GaloisKeys) -> seal.Ciphertext:
        """A new ciphertext holding the complex conjugate of every slot of ``ct``.

        Args:
            ct: a ciphertext at the data level.
            galois_keys: public keys holding the conjugation element 2N - 1.

        Returns:
            The conjugate; ``ct`` is unchanged.

        Raises:
            CiphertextError: SEAL refuses (no special prime, or a key that does
                not hold the conjugation element).
        """
        out = seal.Ciphertext(self.seal)
        try:
            self.evaluator.complex_conjugate(ct, galois_keys, out)
        except (RuntimeError, ValueError) as exc:
            raise CiphertextError(f"conjugation failed: {str(exc).splitlines()[0][:120]}") from None
        return out

    # -- residues ------------------------------------------------------
    def meta(self, scale: float, size: int = 2, primes: int | None = None,
             ntt: bool = True) -> seal_stream.CiphertextMeta:
        """Header fields for a ciphertext with ``primes`` data primes (default: all)."""
        lvl = len(self.moduli) if primes is None else primes
        return seal_stream.CiphertextMeta(self.levels[lvl], ntt, size, self.n, lvl,
                                          scale, 1, self._version)

    def to_residues(self, ct: seal.Ciphertext, primes: int | None = None) -> np.ndarray:
        """Copy a ciphertext's residues out as ``uint64[size, L, N]``.

        Args:
            ct: the ciphertext.
            primes: the number of data primes it must have (default: all).
        """
        meta, arr = seal_stream.parse(self.save_bytes(ct))
        lvl = len(self.moduli) if primes is None else primes
        if meta.parms_id != self.levels.get(lvl):
            raise CiphertextError("ciphertext is not at the expected level")
        return arr

    def from_residues(self, residues: np.ndarray, scale: float, *, ntt: bool = True) -> seal.Ciphertext:
        """Build a SEAL ciphertext from ``uint64[size, L, N]`` residues (L data primes, L <= all)."""
        ct = seal.Ciphertext(self.seal)
        meta = self.meta(scale, residues.shape[0], residues.shape[1], ntt)
        self._load_into(ct, seal_stream.emit(meta, residues))
        return ct

    def plaintext_from_residues(self, residues: np.ndarray, scale: float) -> seal.Plaintext:
        """Build a SEAL plaintext in NTT form from ``uint64[L, N]`` residues (L data primes)."""
        pt = seal.Plaintext()
        blob = seal_stream.emit_plaintext(self.levels[residues.shape[0]], scale, residues, self._version)
        path = self._path()
        try:
            with open(path, "wb") as fh:
                fh.write(blob)
            pt.load(self.seal, path)
        except (RuntimeError, ValueError) as exc:
            raise CiphertextError(f"SEAL refused the plaintext: {str(exc).splitlines()[0][:120]}") from None
        finally:
            if os.path.exists(path):
                os.unlink(path)
        return pt

    def to_ntt(self, polys: np.ndarray) -> np.ndarray:
        """NTT-transform polynomials given as coefficient-form residues, with SEAL's own NTT.

        Args:
            polys: ``uint64[k, L, N]`` residues in ``[0, q)`` of ``k`` polynomials
                at the level with ``L`` data primes.

        Returns:
            ``uint64[k, L, N]`` in SEAL's NTT form (what plaintexts and
            ciphertexts hold).
        """
        k, lvl, n = polys.shape
        out = np.empty_like(polys)
        # A SEAL ciphertext holds 2..16 polynomials and SEAL refuses to
        # transform one whose polynomials after the first are all zero, so up
        # to 15 real ones are followed by a fixed non-zero filler.
        filler = np.ones((1, lvl, n), dtype=np.uint64)
        for start in range(0, k, 15):
            chunk = np.concatenate([polys[start:start + 15], filler])
            ct = self.from_residues(chunk, 1.0, ntt=False)
            self.evaluator.transform_to_ntt_inplace(ct)
            out[start:start + 15] = self.to_residues(ct, lvl)[:-1]
        return out

    def load_ciphertext(self, blob: bytes, *, scale: float, size: int = 2) -> seal.Ciphertext:
        """Strictly parse ciphertext bytes from outside.

        Args:
            blob: a SEAL ciphertext stream.
            scale: the exact scale the protocol expects.
            size: the expected number of polynomials.

        Returns:
            The ciphertext.

        Raises:
            CiphertextError: wrong parms_id, level, scale, size, NTT form,
                residues out of range, or a transparent ciphertext.
        """
        meta, arr = seal_stream.parse(blob)
        if meta.parms_id != self.parms_id or meta.coeff_modulus_size != len(self.moduli):
            raise CiphertextError("ciphertext has the wrong parms_id or level")
        if meta.poly_modulus_degree != self.n or not meta.is_ntt_form:
            raise CiphertextError("ciphertext has the wrong ring dimension or is not in NTT form")
        if meta.size != size or meta.scale != scale:
            raise CiphertextError("ciphertext has an unexpected size or scale")
        for j, q in enumerate(self.moduli):
            if int(arr[:, j, :].max()) >= q:
                raise CiphertextError("ciphertext residues exceed their modulus")
        if not arr[1:].any():
            raise CiphertextError("ciphertext is transparent")
        return self.from_residues(arr, scale)

    def load_seeded_ciphertext(self, blob: bytes, *, scale: float) -> seal.Ciphertext:
        """Strictly load a (possibly seeded) ciphertext from outside, through SEAL's own loader.

        SEAL expands the seed and validates every residue; then the level,
        scale, size and NTT form are checked against what the protocol
        expects.

        Args:
            blob: a SEAL ciphertext stream.
            scale: the exact scale the protocol expects.

        Returns:
            The ciphertext, at the data level.

        Raises:
            CiphertextError: oversized, malformed, wrong level, scale, size or
                form, or transparent.
        """
        if not blob or len(blob) > seal_stream.MAX_STREAM_BYTES:
            raise CiphertextError("ciphertext is empty or oversized")
        ct = seal.Ciphertext(self.seal)
        self._load_into(ct, bytes(blob))
        if tuple(ct.parms_id()) != self.parms_id or ct.size() != 2 or not ct.is_ntt_form():
            raise CiphertextError("ciphertext has the wrong level, size or form")
        if ct.scale != scale:
            raise CiphertextError("ciphertext has an unexpected scale")
        if ct.is_transparent():
            raise CiphertextError("ciphertext is transparent")
        return ct

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params.name})"


class CkksContext(SealContext):
    """SEAL objects for one sealed-profile parameter set.

    Args:
        params: a validated sealed-profile parameter set.

    Raises:
        BackendError: SEAL rejects the parameters.
    """

    params: ParameterSet

    def __init__(self, params: ParameterSet) -> None:
        super().__init__(params)
        self.params = params



class BlindContext(SealContext):
    """SEAL objects for one blind-profile parameter set.

    Args:
        params: a validated blind-profile parameter set.

    Raises:
        BackendError: SEAL rejects the parameters.
    """

    params: BlindParameterSet

    def __init__(self, params: BlindParameterSet) -> None:
        super().__init__(params)
        self.params = params
        self.key_parms_id: tuple[int, int, int, int] = tuple(self.seal.key_parms_id())
        # The key level's primes: the data primes, then SEAL's special prime.
        self.key_moduli: tuple[int, ...] = tuple(
            m.value() for m in self.seal.key_context_data().parms().coeff_modulus())

    @property
    def version(self) -> tuple[int, int]:
        """SEAL's serialisation version (major, minor), for streams built here."""
        return self._version
