"""Azure SDK credentials whose tokens come from the token broker's HTTP API.

    from token_broker_credential import BrokerCredential, AsyncBrokerCredential
"""

from ._async import AsyncBrokerCredential
from ._core import __version__
from ._sync import BrokerCredential

__all__ = ["BrokerCredential", "AsyncBrokerCredential", "__version__"]
