import io

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class RequestBodyTooLarge(ParseError):
    default_detail = "request body is too large"
    default_code = "body_too_large"


class BoundedJSONParser(JSONParser):
    """JSONParser that reads at most DATA_UPLOAD_MAX_MEMORY_SIZE bytes.

    DRF parses from the raw stream and so bypasses Django's own size check; without this a
    client could make the server buffer and parse a body of any size.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        too_large = RequestBodyTooLarge(f"request body is larger than the limit of {limit} bytes")
        if limit is not None and declared and str(declared).isdigit() and int(declared) > limit:
            raise too_large
        if limit is None:
            return super().parse(stream, media_type, parser_context)
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise too_large
        if not body:
            raise ParseError("request body is empty; send a JSON object")
        return super().parse(io.BytesIO(body), media_type, parser_context)
