"""The api's routes by resource: sessions (REST and the WebSocket stream), video jobs, operations
(health, info, metrics, workers). The web page and the API docs are service.web and service.docs."""
