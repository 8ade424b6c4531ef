/// A PNG of one colour, as the host would hand it over (for the tests).
#[cfg(test)]
fn png(width: u32, height: u32, rgb: [u8; 3]) -> Image {
    let mut data = std::io::Cursor::new(Vec::new());
    image::RgbImage::from_pixel(width, height, image::Rgb(rgb))
        .write_to(&mut data, image::ImageFormat::Png)
        .unwrap();
    Image { data: data.into_inner(), mime_type: "image/png".into(), width, height }
}
