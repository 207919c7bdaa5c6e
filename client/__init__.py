"""Device side: the client library for devices and gateways, the fleet simulator, normal sensor signals."""

from .device import BlockingDeviceClient, BufferFull, ClientFailed, DeviceClient, Rejected

__all__ = ["BlockingDeviceClient", "BufferFull", "ClientFailed", "DeviceClient", "Rejected"]
