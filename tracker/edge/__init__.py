"""The edge: the service's listener, answering the tracking routes itself and handing the rest to aiohttp."""
