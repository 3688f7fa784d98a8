# The settings the owner and the maker may change (remote configuration from the cloud, or
# `config set` on the service console). Their schema is the protocol's (app/protocol.py),
# which the cloud checks desired settings against too. Pure.
from app.protocol import PER_KIND, SCHEMA  # noqa: F401 - re-exported
from app.protocol import check_settings as check  # noqa: F401
from app.protocol import setting as get  # noqa: F401
