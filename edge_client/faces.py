"""Face finding with the Haar cascade that ships with OpenCV (opencv-python below 5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from shared_model.preprocessing import to_gray

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    width: int
    height: int

    def to_list(self) -> list[int]:
        return [self.x, self.y, self.width, self.height]


class FaceDetector:
    """Frontal faces, largest first; ``whole_image`` treats every image as one pre-cropped face."""

    def __init__(self, whole_image: bool = False, cascade: str | Path | None = None, min_size: int = 40) -> None:
        self.whole_image = whole_image
        self.min_size = min_size
        self._cascade = None
        if not whole_image:
            path = Path(cascade) if cascade else Path(cv2.data.haarcascades) / DEFAULT_CASCADE
            self._cascade = cv2.CascadeClassifier(str(path))
            if self._cascade.empty():
                raise FileNotFoundError(f"cannot load the Haar cascade {path} (opencv-python 5 no longer ships them: keep it below 5)")

    def detect(self, image: np.ndarray) -> list[Box]:
        height, width = image.shape[:2]
        if self.whole_image:
            return [Box(0, 0, width, height)]
        gray = cv2.equalizeHist(to_gray(image))
        found = self._cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(self.min_size, self.min_size))
        boxes = [Box(int(x), int(y), int(w), int(h)) for x, y, w, h in found]
        return sorted(boxes, key=lambda b: b.width * b.height, reverse=True)

    @staticmethod
    def crop(image: np.ndarray, box: Box) -> np.ndarray:
        return image[box.y : box.y + box.height, box.x : box.x + box.width]
