"""Channel adapters of the notify service (one interface: channels.base.ChannelAdapter)."""
