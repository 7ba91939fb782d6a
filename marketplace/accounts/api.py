from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.accounts import ratelimit


class TokenResponseSerializer(serializers.Serializer):
    token = serializers.CharField()


class ObtainTokenView(APIView):
    """Exchange a username and password for an API token (rate-limited like the log-in page)."""

    permission_classes = [AllowAny]
    authentication_classes = []
    serializer_class = AuthTokenSerializer

    def post(self, request):
        username = str(request.data.get("username", ""))
        address = ratelimit.client_address(request)
        if ratelimit.is_locked_out(username, address):
            return Response({"detail": ratelimit.lockout_message()}, status=status.HTTP_429_TOO_MANY_REQUESTS)
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        if not serializer.is_valid():
            ratelimit.record_failure(username, address)
            return Response(serializer.errors, status=status.HTTP_400_BAD_REQUEST)
        ratelimit.record_success(username, address)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})
