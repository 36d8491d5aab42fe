"""Reading packed masked results back with SEAL, for tests (the key service uses numpy).

:func:`masked_values` rebuilds each packed ciphertext as a SEAL ciphertext
(:func:`pprm.crypto.masked_codec.rebuild_ciphertext`) and decrypts and
decodes it with SEAL, so tests that look at masked values do not depend on
the decider's own numpy decryption.
"""

from __future__ import annotations

import numpy as np
import tenseal.sealapi as seal

from pprm.crypto.context import CkksContext
from pprm.crypto.masked_codec import rebuild_ciphertext
from pprm.matching.sealed import MaskedResult

__all__ = ["masked_values"]


def masked_values(ctx: CkksContext, secret_key: seal.SecretKey, result: MaskedResult) -> list[np.ndarray]:
    """Decrypted masked values per block, in position order.

    Returns:
        One ``float64[templates_per_block]`` per block: the real parts of the
        slots, then (complex packing) their imaginary parts.
    """
    dec = seal.Decryptor(ctx.seal, secret_key)
    out = []
    for blob in result.ciphertexts:
        pt = seal.Plaintext()
        dec.decrypt(rebuild_ciphertext(ctx, blob), pt)
        slots = ctx.decode_complex(pt)
        out.append(np.concatenate([slots.real, slots.imag]) if ctx.params.packing == "complex" else slots.real)
    return out
