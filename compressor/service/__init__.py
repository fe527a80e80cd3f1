"""The gRPC service: ``server`` assembles the handlers, scheduler, auth, health and metrics;
``process`` runs it until SIGTERM."""
