export async function upload() {}
