"""improv-store: an object store for the processes of a real-time experiment.

The package is split the way the repository is. This top level (``proto/``)
holds only the contract and the code that encodes it for both ends:
``improv_store.v1`` is the generated gRPC contract, ``improv_store.protocol``
the facts both ends share, ``improv_store.chunks`` the chunk codec.
``improv_store.service`` is the server and ``improv_store.client`` the Python
client, which also provides the ``improv-store`` command.
"""

__version__ = "0.1.0"
