"""Pure sync decisions. Nothing here touches sockets, files, clocks or adapters."""
