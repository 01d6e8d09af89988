"""Stand-in of rtmaps.types: the I/O type constants, Ioelt and IplImage."""

ANY = "ANY"
AUTO = "AUTO"
IPL_IMAGE = "IPL_IMAGE"
INTEGER32 = "INTEGER32"
INTEGER64 = "INTEGER64"
UINTEGER8 = "UINTEGER8"
UINTEGER64 = "UINTEGER64"
FLOAT32 = "FLOAT32"
FLOAT64 = "FLOAT64"
TEXT_ASCII = "TEXT_ASCII"
MATRIX = "MATRIX"
REAL_OBJECT = "REAL_OBJECT"
DRAWING_OBJECT = "DRAWING_OBJECT"
ENUM = "ENUM"
NUMERIC = (INTEGER32, INTEGER64, UINTEGER8, UINTEGER64, FLOAT32, FLOAT64)


class Ioelt(object):
    """One sample on a wire: its data and its timestamp (microseconds)."""

    def __init__(self, data=None, ts=0):
        self.data = data
        self.ts = ts
        self.buffer_size = None


class IplImage(object):
    """An image sample: image_data (numpy H x W [x C]), its colour model and channel sequence."""

    def __init__(self, image_data=None, color_model="COLR", channel_seq="BGR"):
        self.image_data = image_data
        self.color_model = color_model
        self.channel_seq = channel_seq
