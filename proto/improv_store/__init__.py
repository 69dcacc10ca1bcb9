"""improv-store: an object store for the processes of a real-time experiment.

The package is split the way the repository is: ``improv_store.v1`` is the
generated gRPC contract, ``improv_store.service`` the server and
``improv_store.client`` the Python client.
"""

__version__ = "0.1.0"
