"""Remote hosts: the bootstrap, enrollment and code bundle every remote system shares.

A remote host (an EC2 instance first; SSH and Slurm hosts later) becomes a bigactor worker in
three pieces, none of which depends on how the host was obtained:

* the **bootstrap** (:func:`render_user_data` of a :class:`BootSpec`): one ``#!/bin/sh``
  script, the same bytes for every host of a launch, that finds Python, installs the pinned
  packages (:func:`compute_pins`) into a cached venv and runs the boot agent;
* **enrollment** (:func:`enroll_and_ship`): the driver dials the agent over TLS with its client
  certificate from the cluster CA; the agent proves it holds the launch's one-time token over
  that very channel; the CA certifies the agent's own key (which never leaves the host) for the
  address dialed. The CA's private key never leaves the driver;
* the **code bundle** (:func:`build_bundle`): bigactor and the program's own modules as one
  deterministic archive, cached on the host by its digest, shipped over the enrolled channel.

Then the agent hands its listening socket over to ``bigactor.supervisor.serve_worker`` in the
same process (``_worker``), and the host is a machine like any other, over mutual TLS.

A system uses them so::

    ca = ClusterCA.create()
    bundle = await trio.to_thread.run_sync(build_bundle)
    spec = BootSpec(ca_pem=ca.cert_pem, token=new_token(), pins=compute_pins(imports=bundle.imports),
                    index_url="https://pypi.org/simple", final="poweroff")
    user_data = render_user_data(spec)          # launch n hosts with it
    ...
    worker = await enroll_and_ship(f"tls:{ip}:{spec.port}", ca, spec.token, bundle, config,
                                   identity=driver_identity)

What user data reveals, to whom, and what that allows is written up in ``SECURITY`` below.

SECURITY. The user data holds the cluster CA certificate (public), the one-time enrollment
token, the pins and the index URL. Anyone in the account allowed ``ec2:DescribeInstanceAttribute``
and any process on the host (through the instance metadata service) can read it, for the life
of the instance. The CA certificate and pins give nothing. The token lets its holder answer
the driver's enrollment as one of the launch's hosts, only until that host's agent has been
enrolled (the agent spends it at the first enrollment, and the driver enrolls each host once),
and only by answering on the host's own address, where the driver dials: a relay fails the
channel binding. Someone who can both read the user data and answer on a host's IP before its
agent does could enroll as that worker and receive the program's code and cluster key. The
agent accepts only clients with a certificate from the cluster CA, so nothing an unauthenticated
peer sends is parsed, and no one can push code to a host but the driver (or a machine of the
same cluster, which can already run code on every machine).
"""

from ._bundle import Bundle, build_bundle
from ._enroll import EnrolledWorker, EnrollPolicy, enroll_and_ship, enrollment_context
from ._pins import DRIVER_ONLY, compute_pins
from ._userdata import DEFAULT_PORT, MAX_USER_DATA, BootSpec, new_token, render_user_data
from ._worker import Handoff

__all__ = [
    "DEFAULT_PORT",
    "DRIVER_ONLY",
    "MAX_USER_DATA",
    "BootSpec",
    "Bundle",
    "EnrollPolicy",
    "EnrolledWorker",
    "Handoff",
    "build_bundle",
    "compute_pins",
    "enroll_and_ship",
    "enrollment_context",
    "new_token",
    "render_user_data",
]
